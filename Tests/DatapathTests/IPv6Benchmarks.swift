// The IPv6 established path's cost per packet next to IPv4's, kernel-timed the way
// DatapathBenchmarks times IPv4 (BPF_PROG_TEST_RUN duration, 9 interleaved batches of 4000
// runs, the median of the batch means), for benchmarks/README.md. Run with
//
//     MASQ_BENCH=1 swift test --filter IPv6Benchmarks

import CMasq
import Foundation
import Testing
@testable import Datapath

@Suite("IPv6 benchmarks", .serialized, .enabled(if: ProcessInfo.processInfo.environment["MASQ_BENCH"] != nil))
struct IPv6Benchmarks {
    /// Prints each path's cost: 9 batches of 4000 runs, interleaved, the median batch mean.
    private func measure(_ dp: TestDatapath, _ paths: [(String, TestDatapath.Hook, [UInt8])]) throws {
        var means = Array(repeating: [Double](), count: paths.count)
        for _ in 0..<9 {
            for (i, path) in paths.enumerated() {
                means[i].append(try dp.averageCost(path.1, path.2, runs: 4000))
            }
        }
        for (i, path) in paths.enumerated() {
            let sorted = means[i].sorted()
            print("datapath cost per packet: \(path.0): \(Int(sorted[sorted.count / 2])) ns")
        }
    }

    @Test("established flows of both families: ns per packet")
    func establishedCost() throws {
        let dp = try TestDatapath.dualStack()
        let tcp4 = TCPFlag.ack
        let paths: [(String, TestDatapath.Hook, [UInt8])] = [
            ("IPv4 established TCP, egress SNAT", .egress,
             ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: tcp4))),
            ("IPv6 established TCP, egress SNAT", .egress,
             ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443, flags: tcp4))),
            ("IPv4 established TCP, ingress reverse SNAT", .ingress,
             ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: tcp4))),
            ("IPv6 established TCP, ingress reverse SNAT", .ingress,
             ipv6Frame(src: Net6.server, dst: Net6.snat, .tcp(sport: 443, dport: 40000, flags: tcp4))),
            ("IPv4 established UDP, egress SNAT", .egress,
             ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40001, dport: 53))),
            ("IPv6 established UDP, egress SNAT", .egress,
             ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40001, dport: 53))),
            ("IPv4 established UDP, ingress reverse SNAT", .ingress,
             ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40001))),
            ("IPv6 established UDP, ingress reverse SNAT", .ingress,
             ipv6Frame(src: Net6.server, dst: Net6.snat, .udp(sport: 53, dport: 40001))),
        ]
        // Open the flows (SYN, SYN-ACK, then the measured ACKs keep them established), and
        // check each measured packet is translated.
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.syn | TCPFlag.ack)))
        _ = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443)))
        _ = try dp.run(.ingress, ipv6Frame(src: Net6.server, dst: Net6.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.syn | TCPFlag.ack)))
        for (name, hook, frame) in paths {
            let out = try dp.run(hook, frame)
            #expect(out.frame != frame, "\(name) is not translated")
        }
        let v6 = try #require(try dp.entry6(natKey6(Net6.pod1, Net6.server, sport: 40000, dport: 443, proto: Proto.tcp,
                                                   dir: MASQ_DIR_EGRESS)))
        #expect(v6.ct.tcp_state == UInt8(MASQ_TCP_ESTABLISHED))
        try measure(dp, paths)
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("ICMP errors about a masqueraded flow, both families and directions: ns per packet")
    func icmpErrorCost() throws {
        let dp = try TestDatapath.dualStack(portMin: 50000, portMax: 50099)
        // One UDP flow per family, its port changed, so that each error rewrites address,
        // port and every checksum.
        let left4 = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))).frame
        let left6 = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53))).frame
        let port4 = ParsedFrame(left4).sport, port6 = ParsedFrame6(left6).sport
        let paths: [(String, TestDatapath.Hook, [UInt8])] = [
            ("IPv4 fragmentation needed, ingress to the pod", .ingress,
             icmpErrorFrame(src: "203.0.113.1", dst: Net.snat, type: ICMPType.unreachable, code: 4, mtu: 1280, quoting: left4)),
            ("IPv6 packet too big, ingress to the pod", .ingress,
             icmpv6ErrorFrame(src: "2001:db8:ff::1", dst: Net6.snat, type: ICMPv6Type.packetTooBig, code: 0, word: 1280, quoting: left6)),
            ("IPv4 port unreachable from the pod, egress", .egress,
             icmpErrorFrame(src: Net.pod1, dst: Net.server, type: ICMPType.unreachable, code: 3,
                            quoting: ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 53, dport: 40000)))),
            ("IPv6 port unreachable from the pod, egress", .egress,
             icmpv6ErrorFrame(src: Net6.pod1, dst: Net6.server, type: ICMPv6Type.destUnreachable, code: 4,
                              quoting: ipv6Frame(src: Net6.server, dst: Net6.pod1, .udp(sport: 53, dport: 40000)))),
        ]
        #expect(port4 != 40000 && port6 != 40000)
        for (name, hook, frame) in paths {
            let out = try dp.run(hook, frame)
            #expect(out.frame != frame, "\(name) is not translated")
        }
        try measure(dp, paths)
        #expect(try dp.droppedTotal() == 0)
    }
}
