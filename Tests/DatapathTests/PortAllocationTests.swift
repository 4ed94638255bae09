// The node's own flows and port exhaustion.

import CMasq
@testable import Datapath
import Testing

@Suite("Host flows and port allocation")
struct PortAllocationTests {
    @Test("the node's own flow is tracked as an identity host pair and passes untouched")
    func hostFlowTrackedAsIdentity() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.snat, dst: Net.server, .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        let fwd = try #require(try dp.entry(natKey(Net.snat, Net.server, sport: 40000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(fwd.flags == UInt8(MASQ_NAT_F_HOST))
        #expect(host16(fwd.to_port) == 40000)
        let rev = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)))
        #expect(rev.flags == UInt8(MASQ_NAT_F_HOST))
        #expect(try dp.stat(MASQ_STAT_HOST_FLOWS) == 1)
    }

    @Test("a reply to an identity host flow is counted and passes untouched")
    func hostFlowReplyUntouched() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.snat, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.syn | TCPFlag.ack))
        let out = try dp.run(.ingress, reply)

        #expect(out.frame == reply)
        let rev = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)))
        #expect(rev.packets == 1)
        #expect(try dp.stat(MASQ_STAT_REVSNAT_PACKETS) == 0)
    }

    @Test("a pod flow avoids the reply tuple a host flow uses")
    func podFlowAvoidsHostTuple() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.snat, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.sport != 40000)
        #expect(p.checksumsOK)
        let host = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)))
        #expect(PacketIPv4(raw: host.to_addr) == Net.snat)
    }

    @Test("a host flow whose reply tuple a pod mapping holds gets another port and is translated both ways")
    func hostFlowAvoidsPodTuple() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let out = try dp.run(.egress, ipv4Frame(src: Net.snat, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.sport != 40000)
        #expect(p.checksumsOK)
        let fwd = try #require(try dp.entry(natKey(Net.snat, Net.server, sport: 40000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(fwd.flags == UInt8(MASQ_NAT_F_HOST))

        let back = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: p.sport, flags: TCPFlag.ack))).parsed
        #expect(back.dst == Net.snat)
        #expect(back.dport == 40000)
        #expect(back.checksumsOK)
        let pod = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack))).parsed
        #expect(pod.dst == Net.pod1)
    }

    @Test("a narrow port range fills up and the next flow is dropped as exhausted")
    func narrowRangeExhausts() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50004)
        var ports = Set<UInt16>()
        for i in 0..<5 {
            let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: UInt16(1000 + i), dport: 443)))
            #expect(out.verdict == TC.pass)
            ports.insert(out.parsed.sport)
        }
        #expect(ports == Set(50000...50004))

        let frame = ipv4Frame(src: Net.pod2, dst: Net.server, .tcp(sport: 2000, dport: 443))
        let out = try dp.run(.egress, frame)
        #expect(out.verdict == TC.shot)
        #expect(try dp.dropped(DROP_NAT_PORTS_EXHAUSTED) == 1)
        #expect(try dp.stat(MASQ_STAT_ALLOC_FAIL) == 1)
        #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 5)
        #expect(try dp.entry(natKey(Net.pod2, Net.server, sport: 2000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)) == nil)
        #expect(try dp.entries().count == 10)
    }

    @Test("a full range for one server still has ports for another server")
    func exhaustionIsPerRemote() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50001)
        for i in 0..<2 {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: UInt16(1000 + i), dport: 53)))
        }
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1002, dport: 53))).verdict == TC.shot)
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1002, dport: 54))).verdict == TC.pass)
        #expect(try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server2, .udp(sport: 1002, dport: 53))).verdict == TC.pass)
    }

    @Test("the last free port of a range is found by the exhaustive scan")
    func lastFreePortIsFound() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50999)
        // Every port but one is held by a reply tuple to server:443.
        for port in UInt16(50000)...50999 where port != 50777 {
            var held = masq_nat_entry_v4()
            held.to_addr = Net.pod2.raw
            held.to_port = be16(port)
            try dp.nat.update(natKey(Net.server, Net.snat, sport: 443, dport: port, proto: Proto.tcp, dir: MASQ_DIR_INGRESS), held)
        }
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1234, dport: 443)))

        #expect(out.verdict == TC.pass)
        #expect(out.parsed.sport == 50777)
        // The scan finds it, unless one of the 32 random probes hit it first (32 in 1000).
        #expect(try dp.stat(MASQ_STAT_ALLOC_SCANS) <= 1)
    }

    @Test("a flow whose EGRESS entry was lost keeps its port: its own INGRESS entry does not block it")
    func evictedForwardReusesReverse() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50999)
        let first = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 50123, dport: 443))).parsed
        try dp.nat.delete(natKey(Net.pod1, Net.server, sport: 50123, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS))
        let again = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 50123, dport: 443, flags: TCPFlag.ack))).parsed

        #expect(first.sport == 50123)
        #expect(again.sport == 50123)
        #expect(try dp.entries().count == 2)
    }

    @Test("an INGRESS entry lost while its flow lives is restored by the next egress packet")
    func lostReverseIsRestored() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let rkey = natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)
        try dp.nat.delete(rkey)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack)))

        let rev = try #require(try dp.entry(rkey))
        #expect(PacketIPv4(raw: rev.to_addr) == Net.pod1)
        #expect(try dp.stat(MASQ_STAT_REVERSE_RESTORED) == 1)
    }

    @Test("a flow mapped before the device's SNAT address changed leaves with the new address")
    func snatAddressChangeRemaps() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        let newSNAT: PacketIPv4 = "192.168.0.20"
        try dp.addDevice(snat: newSNAT)
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))

        #expect(out.parsed.src == newSNAT)
        #expect(out.parsed.checksumsOK)
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 53, proto: Proto.udp, dir: MASQ_DIR_EGRESS)))
        #expect(PacketIPv4(raw: fwd.to_addr) == newSNAT)
        #expect(try dp.entry(natKey(Net.server, Net.snat, sport: 53, dport: 40000, proto: Proto.udp, dir: MASQ_DIR_INGRESS)) == nil)
        #expect(try dp.entries().count == 2)
    }

    @Test("a reset from the node without a flow creates no host pair")
    func hostResetNotTracked() throws {
        let dp = try TestDatapath.standard()
        let rst = ipv4Frame(src: Net.snat, dst: Net.server, .tcp(sport: 22, dport: 51515, flags: TCPFlag.rst | TCPFlag.ack))
        let out = try dp.run(.egress, rst)

        #expect(out.frame == rst)
        #expect(try dp.entries().isEmpty)
    }
}
