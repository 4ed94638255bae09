import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// `GET /v1/events` and `masq-client conntrack events` against masqd with real traffic, in the
/// sandbox of `Sandbox` (pods behind the node's ext0, an outside host).
@Suite("flow events end to end", .serialized)
struct EventsE2ETests {
    @Test("a subscriber sees a new masqueraded flow with its translation at once, and its deletion through the API; filters narrow the stream")
    func newAndDeletedFlowsAreSeen() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)
            let client = try Sandbox.clientBinary()
            _ = try sandbox.spawn("events-all", [client, "conntrack", "events", "-o", "json", "--socket", sandbox.socketPath])
            _ = try sandbox.spawn("events-filtered", [client, "conntrack", "events", "-o", "json", "--socket", sandbox.socketPath,
                                                  "--src", Sandbox.podIPs[1], "--proto", "udp"])
            try await sandbox.waitForEventSubscribers(2)

            let server = Sandbox.outsideIP
            let started = Date()
            let udp = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", "41000"])
            let udp2 = try await sandbox.probe(sandbox.pods[1], ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", "41001"])
            let tcp = try await sandbox.probe(sandbox.pods[1], ["tcp", "--dst", "\(server):\(Sandbox.tcpPort)", "--sport", "42000"])
            #expect(udp.succeeded && udp2.succeeded && tcp.succeeded, "\(udp)\n\(udp2)\n\(tcp)")

            // The datapath stamps the event; masqd polls its ring every 100 ms. The bound is a
            // second and then some for a loaded machine: this checks the event is pushed, not
            // found by a later table walk.
            let original = "\(Sandbox.podIPs[0]):41000 -> \(server):\(Sandbox.udpPort)"
            try await sandbox.waitUntil("the subscriber sees the new flow", timeout: .seconds(3)) {
                sandbox.events("events-all").contains { $0.type == "new" && $0.original == original }
            }
            let new = try #require(sandbox.events("events-all").first { $0.type == "new" && $0.original == original })
            #expect(new.translatedSrc == "\(Sandbox.nodeIP):41000", "\(new)")
            #expect(new.proto == "udp" && new.kind == "masquerade" && new.device == Sandbox.device, "\(new)")
            #expect(new.keptPort == true)
            #expect(try #require(new.time).timeIntervalSince(started) > -1, "the event's time \(String(describing: new.time)) is before the probe \(started)")

            let flush = try await sandbox.masqClient(["conntrack", "flush", "--src", Sandbox.podIPs[0], "--proto", "udp"])
            #expect(flush.succeeded, "\(flush)")
            try await sandbox.waitUntil("the subscriber sees the deletion", timeout: .seconds(3)) {
                sandbox.events("events-all").contains { $0.type == "deleted" && $0.original == original }
            }
            let deleted = try #require(sandbox.events("events-all").first { $0.type == "deleted" && $0.original == original })
            #expect(deleted.translatedSrc == "\(Sandbox.nodeIP):41000", "\(deleted)")

            // The filtered subscriber: pod 2's UDP flow, nothing of pod 1's or of TCP.
            let filtered = sandbox.events("events-filtered")
            #expect(filtered.contains { $0.type == "new" && $0.original == "\(Sandbox.podIPs[1]):41001 -> \(server):\(Sandbox.udpPort)" },
                    "\(filtered)")
            #expect(filtered.allSatisfy { $0.proto == "udp" && $0.original?.hasPrefix(Sandbox.podIPs[1] + ":") == true }, "\(filtered)")

            // The text output reads like conntrack -E.
            let text = try await sandbox.masqClientStream(["conntrack", "events", "--src", Sandbox.podIPs[0], "--limit", "1"]) {
                _ = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", "41002"])
            }
            #expect(text.stdout.hasPrefix("[NEW] udp \(Sandbox.podIPs[0]):41002 -> \(server):\(Sandbox.udpPort) => \(Sandbox.nodeIP):41002"),
                    "\(text)")

            // A flow deleted right after it was created: its new (from the datapath's ring,
            // read every 100 ms) still comes before its deletion (masqd's own event).
            for sport in 41010..<41016 {
                _ = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", "\(sport)"])
                let flushed = try await sandbox.masqClient(["conntrack", "flush", "--src", Sandbox.podIPs[0], "--sport", "\(sport)"])
                #expect(flushed.succeeded, "\(flushed)")
            }
            try await sandbox.waitUntil("the subscriber sees the six deletions", timeout: .seconds(5)) {
                sandbox.events("events-all").filter { $0.type == "deleted" && $0.original?.contains(":4101") == true }.count == 6
            }
            let stream = sandbox.events("events-all")
            for sport in 41010..<41016 {
                let flow = "\(Sandbox.podIPs[0]):\(sport) -> \(server):\(Sandbox.udpPort)"
                let created = stream.firstIndex { $0.type == "new" && $0.original == flow }
                let deletedAt = stream.firstIndex { $0.type == "deleted" && $0.original == flow }
                #expect(created != nil && deletedAt != nil && created! < deletedAt!, "\(flow): new at \(String(describing: created)), deleted at \(String(describing: deletedAt))")
            }
        }
    }

    @Test("subscribers that stop reading lose events instead of growing masqd, and forwarding goes on")
    func stuckSubscribersAreBounded() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            let masqd = try await sandbox.startMasqd(mode: .tcx)
            let server = "\(Sandbox.outsideIP):\(Sandbox.udpPort)"
            // Warm up the paths a flood takes, then take the baseline.
            _ = try await sandbox.probe(sandbox.pods[0], ["flood", "--dst", server, "--count", "500", "--first-sport", "10000"])
            let before = try rssKiB(masqd.processIdentifier)

            var stuck: [Int32] = []
            defer { for fd in stuck { close(fd) } }
            for _ in 0..<10 { stuck.append(try stuckSubscriber(sandbox.socketPath)) }
            try await sandbox.waitForEventSubscribers(10)

            // Two rounds of 12000 new flows (12000 events each): the first fills the stuck
            // subscribers' buffers, the second must cost masqd nothing more.
            var rss: [Int] = []
            for firstSport in [20000, 30000] {
                let flood = ["flood", "--dst", server, "--count", "6000", "--first-sport", String(firstSport)]
                async let flood1 = Command.run(sandbox.netprobe(sandbox.pods[0], flood), timeout: .seconds(180))
                async let flood2 = Command.run(sandbox.netprobe(sandbox.pods[1], flood), timeout: .seconds(180))
                for result in try await [flood1, flood2] {
                    // "answered N of 6000": forwarding went on while the subscribers were stuck (a
                    // few answers may come too late for a loaded machine's flood to count them).
                    let answered = result.stdout.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
                    #expect(result.succeeded && answered >= 4_500, "\(result)")
                }
                rss.append(try rssKiB(masqd.processIdentifier))
            }
            let metrics = try await sandbox.metrics()
            #expect((metric(metrics, "masq_event_subscriber_lost_total") ?? 0) > 0,
                    "the stuck subscribers lost nothing: were their events buffered without bound?\n\(metrics)")
            // Full buffers of 1024 events, connection buffers and allocator slack for 10
            // subscribers: some MiB, the bound generous. The second round adds little (the GC and
            // allocator see more flows), far less than buffering its 12000 events per subscriber.
            #expect(rss[0] - before < 48 * 1024, "masqd's RSS grew from \(before) KiB to \(rss[0]) KiB")
            #expect(rss[1] - rss[0] < 16 * 1024, "masqd's RSS grew from \(rss[0]) KiB to \(rss[1]) KiB in the second round")
        }
    }
}

/// One line of `GET /v1/events`, the fields these tests look at.
struct APIEvent: CustomStringConvertible {
    var type: String
    var proto: String?
    var kind: String?
    var original: String?
    var translatedSrc: String?
    var device: String?
    var keptPort: Bool?
    var time: Date?

    init?(_ line: Substring) {
        guard let json = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
              let type = json["type"] as? String else { return nil }
        func endpoint(_ tuple: Any?, _ addr: String, _ port: String) -> String? {
            guard let t = tuple as? [String: Any], let a = t[addr] as? String, let p = t[port] as? Int else { return nil }
            return "\(a):\(p)"
        }
        self.type = type
        proto = json["protocol"] as? String
        kind = json["kind"] as? String
        if let src = endpoint(json["original"], "src", "sport"), let dst = endpoint(json["original"], "dst", "dport") {
            original = "\(src) -> \(dst)"
        }
        translatedSrc = endpoint(json["translated"], "src", "sport")
        device = json["device"] as? String
        keptPort = json["keptPort"] as? Bool
        time = (json["time"] as? String).flatMap { ISO8601DateFormatter().date(from: $0) }
    }

    var description: String { "\(type) \(proto ?? "-") \(original ?? "-") => \(translatedSrc ?? "-")" }
}

extension Sandbox {
    /// The events a spawned `conntrack events -o json` printed so far.
    func events(_ name: String) -> [APIEvent] {
        output(name).split(separator: "\n").compactMap(APIEvent.init)
    }

    /// masqd's /metrics.
    func metrics() async throws -> String {
        try await sh(["curl", "-sf", "--max-time", "10", "--unix-socket", socketPath, "http://masqd/metrics"]).stdout
    }

    /// Waits until masqd counts `n` event subscribers (they connected and subscribed).
    func waitForEventSubscribers(_ n: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while metric(try await metrics(), "masq_event_subscribers") != Double(n) {
            guard ContinuousClock.now < deadline else { throw CommandError(description: "masqd never had \(n) event subscribers") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    /// Runs a masq-client command that streams, doing `traffic` once it subscribed.
    func masqClientStream(_ args: [String], traffic: () async throws -> Void) async throws -> CommandResult {
        let subscribers = metric(try await metrics(), "masq_event_subscribers") ?? 0
        async let result = Command.run([try Self.clientBinary()] + args + ["--socket", socketPath], timeout: .seconds(30))
        try await waitForEventSubscribers(Int(subscribers) + 1)
        try await traffic()
        return try await result
    }
}

/// The value of an unlabelled sample in Prometheus text.
func metric(_ text: String, _ name: String) -> Double? {
    text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ")[1]) }
}

/// VmRSS of a process, KiB.
func rssKiB(_ pid: pid_t) throws -> Int {
    let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else {
        throw CommandError(description: "no VmRSS for pid \(pid)")
    }
    return kib
}

/// A client that subscribes to /v1/events and never reads: its socket buffer (small on
/// purpose) fills, and masqd's writes to it wait. Returns the fd (the caller closes it).
func stuckSubscriber(_ socketPath: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw CommandError(description: "socket: errno \(errno)") }
    var small: Int32 = 4096
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(socketPath.utf8) + [0]) }
    let connected = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0 else { close(fd); throw CommandError(description: "connect \(socketPath): errno \(errno)") }
    let request = Array("GET /v1/events HTTP/1.1\r\nHost: masqd\r\n\r\n".utf8)
    guard write(fd, request, request.count) == request.count else {
        close(fd)
        throw CommandError(description: "write to \(socketPath): errno \(errno)")
    }
    return fd
}
