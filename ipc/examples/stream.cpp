// tern-example-stream: a stream of records from one job to another through a port.
//
//   tern-example-stream reader [--name stream] [--queue 1000]
//   tern-example-stream writer [--name stream] [--count 1000000] [--size 64]
//
// The reader registers a port (queue limit --queue) under --name and reads with a PortReader
// until the writer's end record, checking that every record arrives once and in order. The
// writer (usually on another node) looks the name up and writes --count records of --size
// bytes with a PortWriter (trains, several on their way; a full queue holds it back, nothing is
// dropped), then the end record with a reply right, and waits for the reader's answer. Both
// print what they saw and the rate.
#include <chrono>
#include <cstring>
#include <iostream>

#include "example_util.hpp"

namespace {

using namespace tern;
using examples::Fail;

constexpr std::uint32_t kRecord = 1;
constexpr std::uint32_t kEnd = 2;

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int Reader(const Channel& channel, const std::string& name, long queue) {
  auto port = channel.port_allocate(static_cast<std::uint32_t>(queue));
  if (!port) return Fail("port_allocate", port.error());
  if (auto registered = channel.name_register(name, *port); !registered) {
    return Fail("name_register " + name, registered.error());
  }
  std::cout << "stream reader: reading \"" << name << "\" (queue of " << queue << ")" << std::endl;
  PortReader reader(channel, *port);
  MessageView record;
  std::uint64_t next = 0;
  std::uint64_t bytes = 0;
  std::chrono::steady_clock::time_point first;
  for (;;) {
    if (auto got = reader.next(record); !got) return Fail("next", got.error());
    if (record.id == kEnd) break;
    if (record.id != kRecord || record.bytes().size() < sizeof next) continue;
    if (next == 0) first = std::chrono::steady_clock::now();
    std::uint64_t number = 0;
    std::memcpy(&number, record.bytes().data(), sizeof number);
    if (number != next) {
      std::cerr << "stream reader: record " << number << " where " << next << " was due\n";
      return 1;
    }
    ++next;
    bytes += record.bytes().size();
  }
  const double seconds = next ? Seconds(first) : 0;
  std::cout << "stream reader: " << next << " records in order, " << bytes << " bytes";
  if (seconds > 0) std::cout << ", " << static_cast<long>(next / seconds) << " records/s";
  std::cout << std::endl;
  if (record.reply != 0) {
    Message answer = BytesMessage(record.reply, std::to_string(next));
    answer.destination_disposition = Disposition::kMoveSendOnce;
    if (auto sent = channel.send(answer); !sent) return Fail("answer", sent.error());
  }
  (void)channel.name_unregister(name);
  return 0;
}

int Writer(const Channel& channel, const std::string& name, long count, long size) {
  auto reader = examples::LookupWaiting(channel, name, std::chrono::seconds(30));
  if (!reader) return Fail("name_lookup " + name, reader.error());
  auto answers = channel.port_allocate();
  if (!answers) return Fail("port_allocate", answers.error());
  std::cout << "stream writer: " << count << " records of " << size << " bytes to \"" << name
            << "\"" << std::endl;
  std::string record(static_cast<std::size_t>(std::max<long>(size, 8)), 'r');
  const auto start = std::chrono::steady_clock::now();
  {
    PortWriter writer(channel, *reader);
    for (std::uint64_t i = 0; i < static_cast<std::uint64_t>(count); ++i) {
      std::memcpy(record.data(), &i, sizeof i);  // the record's number, checked by the reader
      if (auto written = writer.write(record, kRecord); !written) {
        return Fail("write", written.error());
      }
    }
    if (auto flushed = writer.flush(); !flushed) return Fail("flush", flushed.error());
  }
  auto end = MessageBuilder(*reader).id(kEnd).reply(*answers).build();
  if (auto sent = channel.send(end, FullPolicy::kWait, kForever); !sent) {
    return Fail("send the end", sent.error());
  }
  auto answer = channel.receive(*answers, std::chrono::seconds(60));
  if (!answer) return Fail("the reader's answer", answer.error());
  const double seconds = Seconds(start);
  std::cout << "stream writer: the reader got " << FirstBytes(*answer) << " of " << count
            << " records; " << static_cast<long>(count / seconds) << " records/s" << std::endl;
  return FirstBytes(*answer) == std::to_string(count) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  const examples::Args args(argc, argv);
  if (args.help() || !args.bad().empty() || (args.mode() != "reader" && args.mode() != "writer")) {
    if (!args.bad().empty()) std::cerr << args.bad() << "\n";
    std::cerr << "usage: tern-example-stream reader [--name stream] [--queue 1000]\n"
                 "       tern-example-stream writer [--name stream] [--count 1000000] "
                 "[--size 64]\n";
    return args.help() ? 0 : 2;
  }
  const Channel channel;
  const std::string name = args.Get("name", "stream");
  if (args.mode() == "reader") return Reader(channel, name, args.Int("queue", 1000));
  return Writer(channel, name, args.Int("count", 1000000), args.Int("size", 64));
}
