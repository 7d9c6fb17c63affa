// Text read from JSON that a peer, a job's user or a file wrote: a field of the wrong type reads
// as absent instead of throwing (nlohmann's value() and get<std::string>() throw type_error,
// which inside a sort comparator or a listing would fail the whole request).
//
// Thread-safety: pure functions.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace tern {

// object[key] when it is a string; "" when it is absent, not a string, or object is no object.
inline std::string JsonText(const nlohmann::json& object, const char* key) {
  if (!object.is_object()) return "";
  const auto found = object.find(key);
  return found != object.end() && found->is_string() ? found->get<std::string>() : "";
}

}  // namespace tern
