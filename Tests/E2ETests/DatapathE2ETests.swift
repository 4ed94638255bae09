import CMasq
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The datapath's completeness end to end: ICMP errors, fragments, port exhaustion and the GC,
/// with real kernels on both sides of masqd (see `Sandbox` and its far network).
@Suite("datapath end to end", .serialized)
struct DatapathE2ETests {
    @Test("a DF datagram above a downstream MTU gives the pod a frag-needed that updates its PMTU")
    func fragNeededReachesPod() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.withFarNetwork(mtu: 1280) {
                try await sandbox.startFarEcho()
                try await sandbox.startMasqd(mode: .tcx)
                let pod = sandbox.pods[0]
                #expect(try await sandbox.cachedPMTU(pod, to: Sandbox.farIP) == nil)

                let result = try await sandbox.datagram(pod, dst: Sandbox.farIP, port: Sandbox.echoPort, size: 1400, df: true)

                #expect(result.errorType == 3 && result.errorCode == 4, "\(result)\n\(sandbox.masqdLog)")
                #expect(result.errorInfo == 1280, "the next-hop MTU reaches the pod: \(result)")
                #expect(result.errorOrigin == Sandbox.outsideIP, "\(result)")
                #expect(try await sandbox.cachedPMTU(pod, to: Sandbox.farIP) == 1280)
                #expect(try await sandbox.pinnedCounter("masq_stats", index: MASQ_STAT_ICMP_ERRORS.rawValue) >= 1, "MASQ_STAT_ICMP_ERRORS")
                // Now the datagram fits the path, and goes through.
                let small = try await sandbox.datagram(pod, dst: Sandbox.farIP, port: Sandbox.echoPort, size: 1200, df: true)
                #expect(small.replyIntact == true, "\(small)")
            }
        }
    }

    @Test("a UDP datagram fragmented on the way out and on the way back arrives intact with the node's address")
    func fragmentedUDPRoundTrip() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.withFarNetwork(mtu: 1280) {
                try await sandbox.startFarEcho()
                try await sandbox.startMasqd(mode: .tcx)

                let result = try await sandbox.datagram(sandbox.pods[0], dst: Sandbox.farIP, port: Sandbox.echoPort, size: 4000)

                #expect(result.replyLength == 4000 && result.replyIntact == true, "\(result)\n\(sandbox.masqdLog)")
                let seen = sandbox.output("echo").split(separator: "\n").map(String.init)
                #expect(seen.count == 1 && seen[0].hasPrefix("udp \(Sandbox.nodeIP):") && seen[0].hasSuffix(" 4000"),
                        "the far host saw: \(seen)")
                #expect(try await sandbox.pinnedCounter("masq_stats", index: MASQ_STAT_FRAG_MATCHED.rawValue) >= 4, "MASQ_STAT_FRAG_MATCHED")
                #expect(try await sandbox.pinnedCounter("masq_drops", index: DROP_FRAG_NOT_FOUND.rawValue) == 0, "DROP_FRAG_NOT_FOUND")
            }
        }
    }

    @Test("traceroute-style TTL expiry on a router past the node reaches the pod")
    func ttlExpiryReachesPod() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.withFarNetwork(mtu: 1500) {
                try await sandbox.startFarEcho()
                try await sandbox.startMasqd(mode: .tcx)
                let pod = sandbox.pods[0]

                // TTL 1 expires on the node itself (no NAT involved); TTL 2 on the outside router,
                // whose error is addressed to the node and must be translated back.
                let hop2 = try await sandbox.datagram(pod, dst: Sandbox.farIP, port: Sandbox.echoPort, size: 64, ttl: 2)
                #expect(hop2.errorType == 11 && hop2.errorCode == 0, "\(hop2)\n\(sandbox.masqdLog)")
                #expect(hop2.errorOrigin == Sandbox.outsideIP, "\(hop2)")

                let hop3 = try await sandbox.datagram(pod, dst: Sandbox.farIP, port: Sandbox.echoPort, size: 64, ttl: 3)
                #expect(hop3.replyIntact == true, "\(hop3)")
            }
        }
    }

    @Test("with a port range of N, N+1 flows to one server give N successes and one counted drop")
    func narrowRangeNPlusOne() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--snat-port-range": "40000-40003"])
            let pod = sandbox.pods[0]
            var answers: [String] = []
            var failures = 0
            // Source ports outside the range: every flow needs a port from it.
            for sport in 20001...20005 {
                let r = try await sandbox.datagram(pod, dst: Sandbox.outsideIP, port: Sandbox.udpPort, size: 16, sport: sport, wait: 2)
                if let text = r.replyText { answers.append(text.trimmingCharacters(in: .whitespacesAndNewlines)) } else { failures += 1 }
            }

            #expect(answers.count == 4 && failures == 1, "answers \(answers)\n\(sandbox.masqdLog)")
            #expect(Set(answers) == Set((40000...40003).map { "\(Sandbox.nodeIP):\($0)" }), "\(answers)")
            #expect(try await sandbox.pinnedCounter("masq_drops", index: DROP_NAT_PORTS_EXHAUSTED.rawValue) == 1, "DROP_NAT_PORTS_EXHAUSTED")
        }
    }

    @Test("the GC removes closed flows and frees their ports")
    func gcFreesClosedFlows() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: [
                "--snat-port-range": "40000-40001", "--conntrack-tcp-closing-timeout": "2s",
                "--conntrack-gc-interval": "1s",
            ])
            let pod = sandbox.pods[0]
            func connect(_ sport: Int) async throws -> CommandResult {
                try await sandbox.probe(pod, ["tcp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.tcpPort)", "--sport", "\(sport)", "--tries", "1"])
            }
            for sport in [20001, 20002] {
                let r = try await connect(sport)
                #expect(r.succeeded && r.stdout.contains("\(Sandbox.nodeIP):4000"), "\(r)\n\(sandbox.masqdLog)")
            }
            // Both connections are closed (FIN both ways); their pairs hold both ports until
            // the GC expires them, a closing lifetime (2 s, the shortest allowed) after their last packet.
            try await sandbox.waitUntilAsync("the GC empties the NAT table", timeout: .seconds(15)) {
                try await sandbox.natEntryCount() == 0
            }
            for sport in [20003, 20004] {
                let r = try await connect(sport)
                #expect(r.succeeded && r.stdout.contains("\(Sandbox.nodeIP):4000"), "a freed port serves a new flow: \(r)\n\(sandbox.masqdLog)")
            }
            #expect(try await sandbox.pinnedCounter("masq_drops", index: DROP_NAT_PORTS_EXHAUSTED.rawValue) == 0)
        }
    }
}

extension Sandbox {
    /// Polls an async `condition` every 200 ms until it holds; throws after `timeout`.
    func waitUntilAsync(_ what: String, timeout: Duration, _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                throw CommandError(description: "timed out waiting until \(what)")
            }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}
