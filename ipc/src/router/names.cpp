// PortRouter, names.cpp
// Names (docs/ipc.md "Names"): register, unregister and look up, across the nodes, by owner rank.
#include "state.hpp"

namespace tern::ipc {

// The uid of the job that registered a name here (nullopt: unknown to this agent).
std::optional<std::uint32_t> PortRouter::State::OwnerOf(const std::string& registrant) const {
  auto it = jobs.find(registrant);
  return it == jobs.end() ? std::nullopt : it->second.uid;
}

std::string PortRouter::State::UidText(std::optional<std::uint32_t> uid) {
  return uid ? "uid " + std::to_string(*uid) : "an unknown user";
}

// Why `job` may not register `text`, which is registered here already.
std::string PortRouter::State::TakenWhy(
    const JobState& job, const std::string& text,
    std::map<std::string, std::pair<ObjectId, std::string>>::iterator taken) {
  const auto owner = OwnerOf(taken->second.second);
  if (owner == job.uid) return "the name \"" + text + "\" is registered already";
  return "the name \"" + text + "\" is registered already, by another user (" + UidText(owner) +
         ")";
}

void PortRouter::State::LookupFound(const std::string& job, std::uint32_t request,
                                    const std::string& text, ObjectId port, std::uint32_t wanted) {
  PostRefIncrement(TicketKind::kNameLookupDelta, job, request, port, text, wanted);
}

void PortRouter::State::OnNameRegister(const std::string& job_name, JobState& job,
                                       ipc::JobRequest& request, WireReader& in) {
  auto text = in.Bytes();
  auto name = in.U32();
  if (!name || text->empty())
    return Bad(job_name, request, "name_register: needs a name and a right");
  Entry* entry = Find(job, *name);
  if (!entry || (entry->type != RightType::kSend && entry->type != RightType::kReceive)) {
    return Invalid(job_name, request, *name, "a send or receive right");
  }
  if (auto taken = names.find(*text); taken != names.end()) {
    return Error(job_name, request.id, JobStatus::kExists, TakenWhy(job, *text, taken));
  }
  PostRefIncrement(TicketKind::kNameRegister, job_name, request.id, entry->id, *text);
}

void PortRouter::State::OnNameUnregister(const std::string& job_name, JobState& /*job*/,
                                         ipc::JobRequest& request, WireReader& in) {
  auto text = in.Bytes();
  if (!text) return Bad(job_name, request, "name_unregister: needs a name");
  auto it = names.find(*text);
  if (it == names.end() || it->second.second != job_name) {
    return Error(job_name, request.id, JobStatus::kNotFound,
                 "this job has not registered \"" + *text + "\"");
  }
  ReleaseRight(RightType::kSend, it->second.first, 1, job_name);
  names.erase(it);
  return Reply(job_name, request.id, JobStatus::kOk);
}

void PortRouter::State::OnNameLookup(const std::string& job_name, JobState& job,
                                     ipc::JobRequest& request, WireReader& in) {
  auto text = in.Bytes();
  if (!text) return Bad(job_name, request, "name_lookup: needs a name");
  // A job that re-attached after its agent restarted looks its names up again under the names
  // it used before (libtern); older jobs send no wanted name.
  const std::uint32_t wanted = in.remaining() >= 4 ? in.U32().value_or(0) : 0;
  // The caller's own user's registration wins, then root's, then another user's: a
  // name another user registered on some node does not capture this user's calls.
  auto search = std::make_shared<NameSearch>();
  search->wanted = wanted;
  if (auto it = names.find(*text); it != names.end()) {
    search->best = it->second.first;
    search->rank = OwnerRank(job.uid, OwnerOf(it->second.second));
    if (search->rank == 0 || peers.empty()) {
      return LookupFound(job_name, request.id, *text, search->best, wanted);
    }
  }
  if (peers.empty()) {
    return Error(job_name, request.id, JobStatus::kNotFound,
                 "no port is registered as \"" + *text + "\"");
  }
  search->remaining = static_cast<int>(peers.size());
  for (std::uint64_t peer : peers) {
    const std::uint64_t ticket = NewTicket(Ticket{.kind = TicketKind::kNameQuery,
                                                  .node = peer,
                                                  .job = job_name,
                                                  .request = request.id,
                                                  .text = *text,
                                                  .search = search});
    Post(peer,
         Envelope{.kind = Remote::kNameQuery, .ticket = ticket, .job = job_name, .text = *text});
  }
  return;
}

void PortRouter::State::HomeNameQuery(const Envelope& e) {
  auto it = names.find(e.text);
  if (it == names.end()) {
    return Respond(e, Envelope{.kind = Remote::kNameQueryResult, .status = JobStatus::kNotFound});
  }
  // With its owner's uid (b = 1 when known), which the asker ranks or checks.
  const auto owner = OwnerOf(it->second.second);
  return Respond(e, Envelope{.kind = Remote::kNameQueryResult,
                             .object = it->second.first,
                             .a = owner.value_or(0),
                             .b = owner ? 1u : 0u});
}

}  // namespace tern::ipc
