import Foundation
import TestSupport
import Testing

/// `GET /v1/ports` and `masq-client ports` against masqd with real traffic under a small
/// snat-port-range, checked against the source ports the outside host saw.
@Suite("port accounting end to end", .serialized)
struct PortsE2ETests {
    @Test("two pods' shares of a 20-port range are what they hold, and what the outside host saw come from them")
    func twoPodsShares() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--snat-port-range": "40000-40019"])
            let server = "\(Sandbox.outsideIP):\(Sandbox.udpPort)"
            // Source ports outside the range: every flow takes a port of it. 6 flows of pod 1 and
            // 3 of pod 2 to the same server port share its 20 ports.
            for (pod, count, first) in [(sandbox.pods[0], 6, 21000), (sandbox.pods[1], 3, 22000)] {
                let flood = try await sandbox.probe(pod, ["flood", "--dst", server, "--count", "\(count)", "--first-sport", "\(first)"])
                #expect(flood.succeeded && flood.stdout.contains("answered \(count) of \(count)"), "\(flood)")
            }

            let result = try await sandbox.masqClient(["ports", "--proto", "udp", "-o", "json"])
            #expect(result.succeeded, "\(result)")
            let ports = try #require(try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any])
            let range = try #require(ports["portRange"] as? [String: Any])
            #expect(range["min"] as? Int == 40000 && range["max"] as? Int == 40019 && range["size"] as? Int == 20, "\(range)")
            #expect(ports["flows"] as? Int == 9 && ports["exact"] as? Bool == true, "\(ports)")
            let holders = try #require(ports["holders"] as? [[String: Any]])
            let rows = holders.map { h in
                "\(h["src"] as? String ?? "?") -> \(h["dst"] as? String ?? "?"):\(h["dport"] as? Int ?? -1) \(h["ports"] as? Int ?? -1) \(h["rangeShare"] as? Double ?? -1)"
            }
            #expect(rows == ["\(Sandbox.podIPs[0]) -> \(server) 6 0.3", "\(Sandbox.podIPs[1]) -> \(server) 3 0.15"], "\(rows)")

            // What the outside host saw: 9 source ports of the node, all in the range, and each
            // pod's share is the ports its flows leave with.
            let seen = Set(sandbox.serverObservations.compactMap { line -> Int? in
                let parts = line.split(separator: " ")
                guard parts.count == 2, parts[0] == "udp", parts[1].hasPrefix(Sandbox.nodeIP + ":") else { return nil }
                return Int(parts[1].dropFirst(Sandbox.nodeIP.count + 1))
            })
            #expect(seen.count == 9 && seen.allSatisfy { (40000...40019).contains($0) }, "\(seen.sorted())")
            let flows = try await sandbox.conntrack().filter { $0.proto == "udp" && $0.originalDst == server }
            for (pod, count) in [(Sandbox.podIPs[0], 6), (Sandbox.podIPs[1], 3)] {
                let left = Set(flows.filter { $0.originalSrc.hasPrefix(pod + ":") }.compactMap { Int($0.translatedSrc.split(separator: ":")[1]) })
                #expect(left.count == count && left.isSubset(of: seen), "\(pod) leaves with \(left.sorted()), the host saw \(seen.sorted())")
            }

            // The table: pod 1 first, its share as a percentage; --src narrows it to pod 2.
            let table = try await sandbox.masqClient(["ports"])
            #expect(table.succeeded, "\(table)")
            let lines = table.stdout.split(separator: "\n").map { $0.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ") }
            #expect(lines == ["PROTO SOURCE DESTINATION PORTS RANGE SHARE",
                              "udp \(Sandbox.podIPs[0]) \(server) 6 30.0%", "udp \(Sandbox.podIPs[1]) \(server) 3 15.0%"], "\(table)")
            let pod2 = try await sandbox.masqClient(["ports", "--src", Sandbox.podIPs[1], "--no-headers"])
            #expect(pod2.stdout.split(separator: "\n").count == 1 && pod2.stdout.contains("\(Sandbox.podIPs[1]) "), "\(pod2)")

            // The GC's pass counts the busiest source for /metrics: 6 of 20 ports.
            try await sandbox.waitUntilAsync("a GC pass counted the busiest source", timeout: .seconds(30)) {
                metric(try await sandbox.metrics(), "masq_nat_source_port_share_max_ratio") == 0.3
            }
        }
    }
}
