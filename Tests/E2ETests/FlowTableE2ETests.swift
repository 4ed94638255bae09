import CMasq
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The flow table under pressure end to end (issue 11): established flows survive a flood of
/// new flows many times the table, a half-closed connection outlives the closing timeout, and
/// a restart with a larger table keeps an established flow.
@Suite("flow table end to end", .serialized)
struct FlowTableE2ETests {
    @Test("translated-port connections survive a flood of new flows 8x the table; their replies reach only them")
    func establishedSurviveFlood() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--nat-max-entries": "1024"])
            let server = "\(Sandbox.outsideIP):\(Sandbox.tcpPort)"
            // Source ports below snat-port-range: every connection's port is translated.
            var sessions: [(Session, String)] = []
            for i in 0..<10 {
                let session = try Session(sandbox, pod: sandbox.pods[0], name: "session\(i)", dst: server, sport: "\(20001 + i)")
                sessions.append((session, try await session.exchange()))
            }
            #expect(sessions.allSatisfy { $0.1.hasPrefix(Sandbox.nodeIP + ":") && !$0.1.hasSuffix(":\(20001)") })

            // Another pod opens 4000 one-datagram flows (8000 entries) into a 1024-entry table.
            let flood = try await Command.run(sandbox.netprobe(sandbox.pods[1], [
                "flood", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)", "--count", "4000", "--first-sport", "30000",
            ]), timeout: .seconds(120))
            #expect(flood.succeeded, "\(flood)")

            for (i, (session, before)) in sessions.enumerated() {
                let after = try await session.exchange()
                #expect(after == before, "connection \(i) kept its translated port\n\(sandbox.masqdLog)")
                session.close()
            }
            #expect(try await sandbox.pinnedCounter("masq_drops", index: DROP_NAT_TABLE_FULL.rawValue) > 0, "DROP_NAT_TABLE_FULL counted the refused flows")
            #expect(try await sandbox.pinnedCounter("masq_drops", index: DROP_NAT_REPLY_CONFLICT.rawValue) == 0, "DROP_NAT_REPLY_CONFLICT")
            #expect(try await sandbox.natEntryCount() <= 1024)
        }
    }

    @Test("a half-closed TCP connection is answered 16 s after its FIN while the GC runs every second")
    func halfClosedAnsweredLate() async throws {
        try await Sandbox.with { sandbox in
            let port = 8082
            let ready = "\(sandbox.dir)/late.ready"
            _ = try sandbox.spawn("late", sandbox.netprobe(sandbox.outside, [
                "serve", "--bind", Sandbox.outsideIP, "--tcp", "\(port)", "--late", "16", "--ready", ready, "--lifetime", "120",
            ]))
            try await sandbox.waitUntil("the late server listens", timeout: .seconds(15)) {
                FileManager.default.fileExists(atPath: ready)
            }
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--conntrack-gc-interval": "1s"])

            let result = try await Command.run(sandbox.netprobe(sandbox.pods[0], [
                "halfclose", "--dst", "\(Sandbox.outsideIP):\(port)", "--sport", "20001", "--wait", "40",
            ]), timeout: .seconds(60))

            #expect(result.succeeded, "\(result)\n\(sandbox.masqdLog)")
            #expect(result.stdout.contains("late \(Sandbox.nodeIP):"), "\(result)")
        }
    }

    @Test("a restart with a larger nat-max-entries keeps an established translated connection")
    func restartWithLargerTable() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--nat-max-entries": "1024"])
            let session = try Session(sandbox, pod: sandbox.pods[0], name: "session",
                                      dst: "\(Sandbox.outsideIP):\(Sandbox.tcpPort)", sport: "20001")
            let before = try await session.exchange()

            #expect(try await sandbox.stopMasqd() == 0)
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--nat-max-entries": "4096"])
            let after = try await session.exchange()

            #expect(after == before, "the connection kept its translated port\n\(sandbox.masqdLog)")
            #expect(sandbox.errors("masqd2").contains("flows carried over"), "\(sandbox.masqdLog)")
            session.close()
        }
    }
}
