// The datapath's cost per packet, kernel-timed (BPF_PROG_TEST_RUN's duration), for
// benchmarks/README.md. Not part of the normal run: a measurement on a shared machine is no
// pass/fail criterion. Run with
//
//     MASQ_BENCH=1 swift test --filter DatapathBenchmarks
//
// (newFlowEventsCost: the new-flow path with flow events on and off; EventsBenchmarks in
// E2ETests measures their delivery.)
//
// and MASQ_BENCH_OBJECT=/path/masq.o to measure another build of bpf/ the same way.

import CLibbpf
import CMasq
import Foundation
import Testing
@testable import Datapath

@Suite("Datapath benchmarks", .serialized, .enabled(if: ProcessInfo.processInfo.environment["MASQ_BENCH"] != nil))
struct DatapathBenchmarks {
    /// The objects under test: the embedded one ("this tree") and, with MASQ_BENCH_OBJECT, that
    /// build too ("other"), measured batch by batch in turn so that both see the same load.
    private func nodes(natEntries: UInt32 = 65536) throws -> [(name: String, dp: TestDatapath)] {
        var objects: [(String, [UInt8])] = [("this tree", EmbeddedDatapath.bytes)]
        if let path = ProcessInfo.processInfo.environment["MASQ_BENCH_OBJECT"] {
            guard let bytes = FileManager.default.contents(atPath: path) else {
                throw BPFError("read MASQ_BENCH_OBJECT", path, errno: ENOENT)
            }
            objects.append(("other (\(path))", [UInt8](bytes)))
        }
        return try objects.map { name, bytes in
            let dp = try TestDatapath(natEntries: natEntries, bytes: bytes)
            try dp.setConfig()
            try dp.addDevice(snat: Net.snat)
            try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
            return (name, dp)
        }
    }

    /// A tc program that returns at once (TC_ACT_UNSPEC): what BPF_PROG_TEST_RUN's duration
    /// holds besides the program (a clock read, the program's entry and exit). On this VM it
    /// moves with the machine's slow and fast spells as masq's paths do.
    private func harnessFloorProgram() throws -> Int32 {
        var insns = [
            bpf_insn(code: UInt8(BPF_ALU64 | BPF_MOV | BPF_K), dst_reg: 0, src_reg: 0, off: 0, imm: -1),
            bpf_insn(code: UInt8(BPF_JMP | BPF_EXIT), dst_reg: 0, src_reg: 0, off: 0, imm: 0),
        ]
        let fd = bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "masq_floor", "GPL", &insns, insns.count, nil)
        if fd < 0 { throw BPFError("load", "the harness floor program", errno: -fd) }
        return fd
    }

    private func median(_ values: [Double]) -> Int {
        let sorted = values.sorted()
        return Int(sorted[sorted.count / 2])
    }

    @Test("established flows, excluded and unmasqueraded packets: ns per packet")
    func establishedCost() throws {
        let tcpOut = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack))
        let tcpIn = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack))
        let udpOut = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40001, dport: 53))
        let udpIn = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40001))
        // A half-closed flow: the pod sent its FIN, the server acknowledged it and goes on sending.
        let halfOut = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40002, dport: 443, flags: TCPFlag.ack, seq: 101, ack: 1))
        let halfIn = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40002, flags: TCPFlag.ack | TCPFlag.psh, seq: 1, ack: 101))
        let notPod = ipv4Frame(src: Net.notPod, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack))
        let podToPod = ipv4Frame(src: Net.pod1, dst: Net.pod2, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack))
        let paths: [(String, TestDatapath.Hook, [UInt8])] = [
            ("established TCP, egress SNAT", .egress, tcpOut),
            ("established TCP, ingress reverse SNAT", .ingress, tcpIn),
            ("established UDP, egress SNAT", .egress, udpOut),
            ("established UDP, ingress reverse SNAT", .ingress, udpIn),
            ("half-closed TCP (close-wait), egress SNAT", .egress, halfOut),
            ("half-closed TCP (close-wait), ingress reverse SNAT", .ingress, halfIn),
            ("egress, source not a pod", .egress, notPod),
            ("egress, pod to pod (excluded)", .egress, podToPod),
        ]
        let nodes = try nodes()
        let floorFD = try harnessFloorProgram()
        defer { close(floorFD) }
        for (_, dp) in nodes {
            // Each measured packet is on the path it is named for.
            #expect(try dp.run(.egress, tcpOut).parsed.src == Net.snat)
            #expect(try dp.run(.ingress, tcpIn).parsed.dst == Net.pod1)
            #expect(try dp.run(.egress, udpOut).parsed.src == Net.snat)
            #expect(try dp.run(.ingress, udpIn).parsed.dst == Net.pod1)
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40002, dport: 443, flags: TCPFlag.ack, seq: 99, ack: 1)))
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40002, dport: 443, flags: TCPFlag.fin | TCPFlag.ack, seq: 100, ack: 1)))
            #expect(try dp.run(.ingress, halfIn).parsed.dst == Net.pod1)
            #expect(try dp.run(.egress, halfOut).parsed.src == Net.snat)
            let half = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40002, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
            #expect(half.tcp_state == UInt8(MASQ_TCP_CLOSE_WAIT))
            #expect(try dp.run(.egress, notPod).frame == notPod)
            #expect(try dp.run(.egress, podToPod).frame == podToPod)
            let tcp = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
            #expect(tcp.tcp_state == UInt8(MASQ_TCP_ESTABLISHED))
        }
        for (path, hook, frame) in paths {
            var means = Array(repeating: [Double](), count: nodes.count)
            var floor = [Double]()
            for _ in 0..<9 {
                floor.append(try TestDatapath.averageCost(programFD: floorFD, frame, runs: 4000))
                for (i, node) in nodes.enumerated() {
                    means[i].append(try node.dp.averageCost(hook, frame, runs: 4000))
                }
            }
            for (i, node) in nodes.enumerated() {
                print("datapath cost per packet: \(path): \(median(means[i])) ns [\(node.name)]")
            }
            print("datapath cost per packet: \(path): harness floor in the same batches \(median(floor)) ns")
        }
        for (_, dp) in nodes {
            #expect(try dp.droppedTotal() == 0)
        }
    }

    @Test("new flows: ns per first packet, keeping the source port and needing a random one")
    func newFlowCost() throws {
        let nodes = try nodes()
        for (what, firstPort) in [("keeping its port", UInt16(40000)), ("needing a random port", UInt16(1024))] {
            var costs = Array(repeating: [Double](), count: nodes.count)
            for port in firstPort..<firstPort + 4000 {
                for (i, node) in nodes.enumerated() {
                    let (out, ns) = try node.dp.runTimed(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: port, dport: 443)))
                    #expect(out.parsed.src == Net.snat)
                    costs[i].append(Double(ns))
                }
            }
            for (i, node) in nodes.enumerated() {
                print("datapath cost per packet: new flow \(what): \(median(costs[i])) ns, median of 4000 [\(node.name)]")
            }
        }
        for (_, dp) in nodes {
            #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 8000)
            #expect(try dp.stat(MASQ_STAT_ALLOC_KEPT_PORT) == 4000)
        }
    }

    /// One packet of a TCP connection as connectionCost replays it: its hook, flags, and
    /// sequence and acknowledgment numbers relative to the sender's and the peer's initial ones.
    private struct ConnectionStep {
        let name: String
        let hook: TestDatapath.Hook
        let flags: UInt8
        let seq: UInt32
        let ack: UInt32
        var payload = 0
    }

    /// The connections/s load of benchmarks/sidebyside.sh, packet by packet: the client's SYN,
    /// ACK, request, FIN and last ACK leave through the device (egress), the server's SYN-ACK,
    /// ACK, reply and FIN come back (ingress).
    private static let connectionSteps = [
        ConnectionStep(name: "SYN", hook: .egress, flags: TCPFlag.syn, seq: 0, ack: 0),
        ConnectionStep(name: "SYN-ACK", hook: .ingress, flags: TCPFlag.syn | TCPFlag.ack, seq: 0, ack: 1),
        ConnectionStep(name: "ACK", hook: .egress, flags: TCPFlag.ack, seq: 1, ack: 1),
        ConnectionStep(name: "request", hook: .egress, flags: TCPFlag.ack | TCPFlag.psh, seq: 1, ack: 1, payload: 4),
        ConnectionStep(name: "ACK of request", hook: .ingress, flags: TCPFlag.ack, seq: 1, ack: 5),
        ConnectionStep(name: "reply", hook: .ingress, flags: TCPFlag.ack | TCPFlag.psh, seq: 1, ack: 5, payload: 4),
        ConnectionStep(name: "FIN", hook: .egress, flags: TCPFlag.fin | TCPFlag.ack, seq: 5, ack: 5),
        ConnectionStep(name: "FIN-ACK", hook: .ingress, flags: TCPFlag.fin | TCPFlag.ack, seq: 5, ack: 6),
        ConnectionStep(name: "last ACK", hook: .egress, flags: TCPFlag.ack, seq: 6, ack: 6),
    ]

    private func environmentInt(_ name: String, default value: Int) -> Int {
        ProcessInfo.processInfo.environment[name].flatMap { Int($0) } ?? value
    }

    /// Whole connections as the side-by-side run makes them. Its client cycles through the even
    /// ephemeral ports (Linux's connect() takes those), so each SYN re-opens the closed pair its
    /// port left one round before, in a table of the run's size (28k entries), and finds its
    /// two entries as cold as a round of other connections leaves them. MASQ_BENCH_PORTS (default
    /// 14116) and MASQ_BENCH_ROUNDS (default 4, the first one only creating the pairs) change
    /// that: a single port keeps its entries hot.
    @Test("connections: ns per packet of a whole TCP connection, SYN to last ACK, ports re-used")
    func connectionCost() throws {
        let nodes = try nodes(natEntries: 524_288)
        let ports = (0..<environmentInt("MASQ_BENCH_PORTS", default: 14116)).map { UInt16(32768 + 2 * $0) }
        let rounds = environmentInt("MASQ_BENCH_ROUNDS", default: 4)
        let steps = Self.connectionSteps
        let floorFD = try harnessFloorProgram()
        defer { close(floorFD) }
        var costs = Array(repeating: Array(repeating: [Double](), count: steps.count), count: nodes.count)
        var totals = Array(repeating: [Double](), count: nodes.count)
        for round in 0..<rounds {
            for port in ports {
                // Fresh initial sequence numbers each round: a re-used port is a new connection.
                let client = UInt32(port) &* 7919 &+ UInt32(round) &* 1_000_003
                let server = client &* 31 &+ 17
                for (i, node) in nodes.enumerated() {
                    var total = 0.0
                    for (s, step) in steps.enumerated() {
                        let payload = Array(repeating: UInt8(0x61), count: step.payload)
                        let frame = step.hook == .egress
                            ? ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: port, dport: 7000, flags: step.flags,
                                        seq: client &+ step.seq, ack: step.ack == 0 ? 0 : server &+ step.ack), payload: payload)
                            : ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 7000, dport: port, flags: step.flags,
                                        seq: server &+ step.seq, ack: client &+ step.ack), payload: payload)
                        let (out, ns) = try node.dp.runTimed(step.hook, frame)
                        let translated = step.hook == .egress ? out.parsed.src == Net.snat : out.parsed.dst == Net.pod1
                        #expect(translated, "\(step.name), port \(port)")
                        if round > 0 { costs[i][s].append(Double(ns)) }
                        total += Double(ns)
                    }
                    if round > 0 { totals[i].append(total) }
                }
            }
        }
        var floor = [Double]()
        // After the connections, not between them: 4000 runs of another program leave masq's
        // code and data cold.
        for _ in 0..<9 {
            floor.append(try TestDatapath.averageCost(programFD: floorFD, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1, dport: 7000)), runs: 4000))
        }
        for (i, node) in nodes.enumerated() {
            for (s, step) in steps.enumerated() {
                print("datapath cost per packet: connection, \(step.name) (\(step.hook)): median \(median(costs[i][s])) ns [\(node.name)]")
            }
            let mean = totals[i].reduce(0, +) / Double(totals[i].count)
            print("datapath cost per connection: median \(median(totals[i])) ns, mean \(Int(mean)) ns over \(totals[i].count) connections [\(node.name)]")
        }
        print("datapath cost per packet: harness floor \(median(floor)) ns")
        for (_, dp) in nodes {
            #expect(try dp.droppedTotal() == 0)
            #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == UInt64(ports.count), "round 0 creates each pair, later rounds re-open it")
        }
    }

    @Test("new flows with events on (a subscriber reading) and off: ns per first packet")
    func newFlowEventsCost() throws {
        // Two nodes alike but for MASQ_CFG_EVENTS, measured flow by flow in turn so that both
        // see the same load; the ring is drained between batches (untimed), as masqd's reader does.
        var nodes: [(name: String, dp: TestDatapath)] = []
        for (name, flags) in [("events off", MASQ_CFG_IPV4_MASQ), ("events on", MASQ_CFG_IPV4_MASQ | MASQ_CFG_EVENTS)] {
            let dp = try TestDatapath(natEntries: 65536)
            try dp.setConfig(flags: flags)
            try dp.addDevice(snat: Net.snat)
            try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
            nodes.append((name, dp))
        }
        let reader = try NATEventReader(map: try nodes[1].dp.object.map(MASQ_MAP_EVENTS))
        var delivered = 0
        var costs = Array(repeating: [Double](), count: nodes.count)
        for port in UInt16(40000)..<44000 {
            for (i, node) in nodes.enumerated() {
                let (out, ns) = try node.dp.runTimed(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: port, dport: 53)))
                #expect(out.parsed.src == Net.snat)
                costs[i].append(Double(ns))
            }
            if port % 500 == 499 { delivered += try reader.poll(timeoutMilliseconds: 0).events.count }
        }
        delivered += try reader.poll(timeoutMilliseconds: 0).events.count
        for (i, node) in nodes.enumerated() {
            print("datapath cost per packet: new UDP flow, \(node.name): \(median(costs[i])) ns, median of 4000")
        }
        let lost = try nodes[1].dp.stat(MASQ_STAT_EVENTS_LOST)
        #expect(delivered == 4000 && lost == 0, "\(delivered) events read, \(lost) lost")
    }
}
