// The flow table under pressure (issue 11): a full table refuses new flows instead of evicting
// live ones, a lost half never leads to another port or to a reply entry of another flow,
// host flows are tracked only where a pod mapping could collide and never dropped for lack of
// room, and the node's own fragments pass.

import CMasq
import Testing
@testable import Daemon
@testable import Datapath

@Suite("Flow table")
struct FlowTableTests {
    /// A standard node with a NAT table of `entries` entries.
    private func node(entries: UInt32, portMin: UInt16 = 32768, portMax: UInt16 = 65535) throws -> TestDatapath {
        let dp = try TestDatapath(natEntries: entries)
        try dp.setConfig(portMin: portMin, portMax: portMax)
        try dp.addDevice(snat: Net.snat)
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        return dp
    }

    private func egress(_ dp: TestDatapath, _ src: PacketIPv4, sport: UInt16, dport: UInt16 = 443, flags: UInt8 = TCPFlag.ack,
                        dst: PacketIPv4 = Net.server) throws -> RunResult {
        try dp.run(.egress, ipv4Frame(src: src, dst: dst, .tcp(sport: sport, dport: dport, flags: flags)))
    }

    private func reply(_ dp: TestDatapath, port: UInt16, sport: UInt16 = 443, flags: UInt8 = TCPFlag.ack) throws -> RunResult {
        try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: sport, dport: port, flags: flags)))
    }

    // MARK: 1. A full table

    @Test("a full table refuses the new flow (nat_table_full) and every established flow keeps its port")
    func fullTableRefusesNewFlows() throws {
        let dp = try node(entries: 64)
        // 10 established flows whose ports needed translation (source ports below the range).
        var ports: [UInt16: UInt16] = [:]
        for i in UInt16(0)..<10 {
            let out = try egress(dp, Net.pod1, sport: 1000 + i, flags: TCPFlag.syn)
            ports[1000 + i] = out.parsed.sport
            _ = try reply(dp, port: out.parsed.sport, flags: TCPFlag.syn | TCPFlag.ack)
            _ = try egress(dp, Net.pod1, sport: 1000 + i)
        }
        // A flood of short UDP flows from another pod, many times the table.
        var refused = 0
        for i in 0..<500 {
            let out = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server2, .udp(sport: UInt16(20000 + i), dport: 53)))
            if out.verdict == TC.shot { refused += 1 }
        }

        #expect(refused == 500 - (64 - 20) / 2)
        #expect(try dp.dropped(DROP_NAT_TABLE_FULL) == UInt64(refused))
        #expect(try dp.stat(MASQ_STAT_TABLE_FULL) == UInt64(refused))
        #expect(try dp.entries().count == 64)
        for (sport, port) in ports {
            let out = try egress(dp, Net.pod1, sport: sport)
            #expect(out.verdict == TC.pass && out.parsed.sport == port, "flow \(sport) kept port \(port)")
            let back = try reply(dp, port: port)
            #expect(back.parsed.dst == Net.pod1 && back.parsed.dport == sport)
        }
    }

    // MARK: 2. A lost half

    @Test("a flow whose EGRESS entry was lost gets the same translated port again")
    func lostEgressSamePort() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50999)
        // Other flows to the same remote hold ports, so the probe order matters.
        for i in UInt16(0)..<300 {
            _ = try egress(dp, Net.pod2, sport: 2000 + i, flags: TCPFlag.syn)
        }
        let first = try egress(dp, Net.pod1, sport: 1234, flags: TCPFlag.syn).parsed.sport
        try dp.nat.delete(natKey(Net.pod1, Net.server, sport: 1234, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS))
        let again = try egress(dp, Net.pod1, sport: 1234)

        #expect(again.verdict == TC.pass)
        #expect(again.parsed.sport == first)
        #expect(try dp.entries().count == 602, "the flow's own reply entry was reused, not doubled")
    }

    @Test("the probe order is a keyed hash of the tuple: the same key gives the same port, another key another order")
    func probeOrderKeyed() throws {
        func firstPort(key: UInt32) throws -> UInt16 {
            let dp = try TestDatapath.standard(portMin: 40000, portMax: 49999)
            var cfg = try #require(try dp.config.lookup(UInt32(0), as: masq_config.self))
            cfg.port_key = key
            try dp.config.update(UInt32(0), cfg)
            return try egress(dp, Net.pod1, sport: 1234, flags: TCPFlag.syn).parsed.sport
        }
        let a = try firstPort(key: 7)
        #expect(try firstPort(key: 7) == a)
        let others = try Set((1...6).map { try firstPort(key: UInt32($0) * 1_000_003) })
        #expect(others.count > 1, "the key changes the order")
    }

    @Test("a flow whose INGRESS entry another flow took is dropped (nat_reply_conflict) from its next check on")
    func lostIngressTakenByAnotherFlow() throws {
        let dp = try TestDatapath.standard()
        let remote = Net.server
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: remote, .udp(sport: 40000, dport: 80)))
        let rkey = natKey(remote, Net.snat, sport: 80, dport: 40000, proto: Proto.udp, dir: MASQ_DIR_INGRESS)
        try dp.nat.delete(rkey)
        // pod2 claims the same wire tuple while pod1's reply entry is gone.
        let pod2 = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: remote, .udp(sport: 40000, dport: 80)))
        #expect(pod2.parsed.sport == 40000)

        // pod1's established packets check the reply entry when they store last_seen
        // (MASQ_CT_REFRESH_NS, at most a second apart).
        try dp.age(natKey(Net.pod1, remote, sport: 40000, dport: 80, proto: Proto.udp, dir: MASQ_DIR_EGRESS))
        let pod1 = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: remote, .udp(sport: 40000, dport: 80)))
        #expect(pod1.verdict == TC.shot)
        #expect(try dp.dropped(DROP_NAT_REPLY_CONFLICT) == 1)
        let owner = try #require(try dp.entry(rkey))
        #expect(PacketIPv4(raw: owner.to_addr) == Net.pod2, "the reply entry still maps to the flow that holds it")
        let back = try dp.run(.ingress, ipv4Frame(src: remote, dst: Net.snat, .udp(sport: 80, dport: 40000)))
        #expect(back.parsed.dst == Net.pod2)
    }

    @Test("a lost INGRESS entry still free is restored at the same port by the flow's next packet")
    func lostIngressRestored() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50999)
        let port = try egress(dp, Net.pod1, sport: 1234, flags: TCPFlag.syn).parsed.sport
        let rkey = natKey(Net.server, Net.snat, sport: 443, dport: port, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)
        try dp.nat.delete(rkey)
        let again = try egress(dp, Net.pod1, sport: 1234)

        #expect(again.parsed.sport == port)
        let rev = try #require(try dp.entry(rkey))
        #expect(PacketIPv4(raw: rev.to_addr) == Net.pod1 && host16(rev.to_port) == 1234)
        #expect(try dp.stat(MASQ_STAT_REVERSE_RESTORED) == 1)
    }

    // MARK: 4 and 5. Host flows

    @Test("the node's SYN-ACK alone is a syn-recv host pair on the SYN lifetime, not established")
    func hostSynAckOnly() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.snat, dst: Net.server, .tcp(sport: 40000, dport: 5555, flags: TCPFlag.syn | TCPFlag.ack)))
        let fwd = try #require(try dp.entry(natKey(Net.snat, Net.server, sport: 40000, dport: 5555, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(FlowLifetimes.state(proto: .tcp, tcpState: fwd.tcp_state, seen: fwd.seen) == .synRecv)
        let sweeper = ConntrackSweeper(nat: dp.nat, lifetimes: .default)
        #expect(try sweeper.sweep(now: NATEntries.bootTimeNow() + 61_000_000_000).deletedEntries == 2)
    }

    @Test("host flows are tracked only where a pod mapping could collide", arguments: [
        ("to another node", Net.node2, UInt16(40000)), ("from a port outside snat-port-range", Net.server, UInt16(22)),
    ])
    func hostFlowsNotTracked(_ what: String, _ dst: PacketIPv4, _ sport: UInt16) throws {
        let dp = try TestDatapath.standard()
        try dp.addNode(Net.node2)
        let frame = ipv4Frame(src: Net.snat, dst: dst, .tcp(sport: sport, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass && out.frame == frame)
        #expect(try dp.entries().isEmpty, "\(what): no entry")
    }

    @Test("with the table full the node's packets pass untracked; a pod's new flow is refused")
    func hostPassesWithFullTable() throws {
        let dp = try node(entries: 2)
        _ = try egress(dp, Net.pod1, sport: 40000, flags: TCPFlag.syn)
        let host = ipv4Frame(src: Net.snat, dst: Net.server2, .tcp(sport: 41000, dport: 443))
        let out = try dp.run(.egress, host)

        #expect(out.verdict == TC.pass && out.frame == host)
        #expect(try dp.stat(MASQ_STAT_HOST_UNTRACKED) == 1)
        #expect(try egress(dp, Net.pod2, sport: 40001, flags: TCPFlag.syn).verdict == TC.shot)
        #expect(try dp.dropped(DROP_NAT_TABLE_FULL) == 1)
        #expect(try dp.droppedTotal() == 1)
    }

    // MARK: 6. The node's fragments

    @Test("the node's own later fragment before its first passes, both ways")
    func nodeFragmentsOutOfOrder() throws {
        let dp = try TestDatapath.standard()
        let datagram = ipv4Frame(src: Net.snat, dst: Net.server, .udp(sport: 40000, dport: 53),
                                 payload: Array(repeating: 7, count: 100), ipID: 0x4242)
        let parts = fragment(datagram, chunk: 40)
        for part in parts.reversed() {
            let out = try dp.run(.egress, part)
            #expect(out.verdict == TC.pass && out.frame == part)
        }
        let answer = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000),
                               payload: Array(repeating: 9, count: 100), ipID: 0x4343)
        for part in fragment(answer, chunk: 40).reversed() {
            let out = try dp.run(.ingress, part)
            #expect(out.verdict == TC.pass && out.frame == part)
        }
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("the tail of a fragmented ICMP message other than echo passes, both ways and from pods")
    func icmpNonEchoTails() throws {
        let dp = try TestDatapath.standard()
        // A timestamp request (type 13) is not translated: its fragments all pass as they are.
        for (hook, src, dst) in [(TestDatapath.Hook.ingress, Net.server, Net.snat), (.egress, Net.pod1, Net.server)] {
            let message = ipv4Frame(src: src, dst: dst, .icmp(type: 13, code: 0, body: Array(repeating: 0, count: 120)),
                                    payload: [], ipID: 0x5151)
            for part in fragment(message, chunk: 48) {
                let out = try dp.run(hook, part)
                #expect(out.verdict == TC.pass && out.frame == part)
            }
        }
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("the tail fragments of an ICMP error to the node pass")
    func icmpErrorTails() throws {
        let dp = try TestDatapath.standard()
        let quoted = ipv4Frame(src: Net.snat, dst: Net.server, .udp(sport: 40000, dport: 53), payload: Array(repeating: 3, count: 200))
        let error = icmpErrorFrame(src: Net.server2, dst: Net.snat, type: ICMPType.unreachable, code: 3, quoting: quoted)
        for part in fragment(error, chunk: 96) {
            let out = try dp.run(.ingress, part)
            #expect(out.verdict == TC.pass && out.frame == part)
        }
        #expect(try dp.droppedTotal() == 0)
    }
}
