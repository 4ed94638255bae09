// Egress: which packets from pods are masqueraded, the rewritten bytes and checksums, and the
// mapping pairs left in masq_nat_v4.

import CMasq
import Testing
@testable import Daemon
@testable import Datapath

@Suite("Egress SNAT")
struct EgressSNATTests {
    @Test("egress TCP from a pod is rewritten to the SNAT address with valid checksums")
    func tcpFromPodIsMasqueraded() throws {
        let dp = try TestDatapath.standard()
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        #expect(out.verdict == TC.pass)
        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.dst == Net.server)
        #expect(p.dport == 443)
        #expect(p.ipChecksumOK)
        #expect(p.l4ChecksumOK)
        #expect(try dp.stat(MASQ_STAT_SNAT_PACKETS) == 1)
    }

    @Test("egress UDP from a pod is rewritten to the SNAT address with valid checksums")
    func udpFromPodIsMasqueraded() throws {
        let dp = try TestDatapath.standard()
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40001, dport: 53)))

        #expect(out.verdict == TC.pass)
        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.sport == 40001)
        #expect(p.l4Checksum != 0)
        #expect(p.checksumsOK)
    }

    @Test("egress ICMP echo request from a pod is rewritten with a valid ICMP checksum")
    func icmpEchoFromPodIsMasqueraded() throws {
        let dp = try TestDatapath.standard()
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 40002)))

        #expect(out.verdict == TC.pass)
        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.icmpType == ICMPType.echo)
        #expect(p.sport == 40002)
        #expect(p.checksumsOK)
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40002, dport: 0, proto: Proto.icmp, dir: MASQ_DIR_EGRESS)))
        #expect(host16(fwd.to_port) == 40002)
        #expect(try dp.entry(natKey(Net.server, Net.snat, sport: 0, dport: 40002, proto: Proto.icmp, dir: MASQ_DIR_INGRESS)) != nil)
    }

    @Test("egress ICMP echo id outside the port range is remapped with a valid checksum")
    func icmpEchoIdIsRemapped() throws {
        let dp = try TestDatapath.standard()
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 7)))

        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.sport >= 32768)
        #expect(p.checksumsOK)
    }

    @Test("a new flow keeps its source port when it is free and inside the range")
    func originalPortIsKept() throws {
        let dp = try TestDatapath.standard()
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        #expect(out.parsed.sport == 40000)
        #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 1)
        #expect(try dp.stat(MASQ_STAT_ALLOC_KEPT_PORT) == 1)
    }

    @Test("a new flow creates an EGRESS and an INGRESS entry that point at each other")
    func newFlowCreatesPair() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        _ = try dp.run(.egress, frame)

        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(PacketIPv4(raw: fwd.to_addr) == Net.snat)
        #expect(host16(fwd.to_port) == 40000)
        #expect(fwd.flags == 0)
        #expect(fwd.packets == 1)
        #expect(fwd.bytes == UInt64(frame.count - 14))
        #expect(fwd.seen == UInt8(MASQ_SEEN_SYN))
        #expect(fwd.ifindex == Net.testIfindex)
        #expect(fwd.created > 0 && fwd.last_seen >= fwd.created)

        let rev = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)))
        #expect(PacketIPv4(raw: rev.to_addr) == Net.pod1)
        #expect(host16(rev.to_port) == 40000)
        #expect(rev.packets == 0)
        #expect(try dp.entries().count == 2)
    }

    @Test("later packets of a flow reuse its mapping and count in its entry")
    func laterPacketsReuseMapping() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack | TCPFlag.fin)))

        #expect(out.parsed.sport == 40000)
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(fwd.packets == 2)
        #expect(fwd.seen == UInt8(MASQ_SEEN_SYN | MASQ_SEEN_FIN))
        #expect(try dp.stat(MASQ_STAT_ALLOC_OK) == 1)
        #expect(try dp.entries().count == 2)
    }

    @Test("a second pod with the same source port to the same server gets a different port")
    func secondPodSamePortGetsAnotherPort() throws {
        let dp = try TestDatapath.standard()
        let first = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let second = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        #expect(first.parsed.sport == 40000)
        let p = second.parsed
        #expect(p.src == Net.snat)
        #expect(p.sport != 40000)
        #expect((32768...65535).contains(p.sport))
        #expect(p.checksumsOK)
        let rev = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: 443, dport: p.sport, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)))
        #expect(PacketIPv4(raw: rev.to_addr) == Net.pod2)
        #expect(host16(rev.to_port) == 40000)
    }

    @Test("a source port outside the port range is remapped into it")
    func portOutsideRangeIsRemapped() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53)))

        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect((50000...50099).contains(p.sport))
        #expect(p.checksumsOK)
        #expect(try dp.stat(MASQ_STAT_ALLOC_KEPT_PORT) == 0)
    }

    @Test("a UDP datagram with checksum 0 leaves with checksum 0")
    func udpZeroChecksumStaysZero() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53, zeroChecksum: true)))

        let p = out.parsed
        #expect(p.src == Net.snat)
        #expect(p.sport != 1234)
        #expect(p.l4Checksum == 0)
        #expect(p.ipChecksumOK)
    }

    @Test("a packet with IP options is translated at the right offsets")
    func ipOptionsAreSkipped() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        // Record Route-sized options: NOP padding plus a router alert (RFC 2113), 8 bytes.
        let options: [UInt8] = [0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1234, dport: 443), options: options))

        let p = out.parsed
        #expect(p.ihl == 7)
        #expect(p.src == Net.snat)
        #expect(p.dport == 443)
        #expect((50000...50099).contains(p.sport))
        #expect(p.checksumsOK)
        #expect(Array(out.frame[34..<42]) == options)
    }

    @Test("a source outside the pod CIDRs passes untouched")
    func nonPodSourceUntouched() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.notPod, dst: Net.server, .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        #expect(try dp.entries().isEmpty)
    }

    @Test("a device without an entry in masq_devices passes traffic untouched")
    func unknownDeviceUntouched() throws {
        let dp = try TestDatapath()
        try dp.setConfig()
        try dp.addPodCIDR(Net.podCIDR.0, Net.podCIDR.1)
        try dp.addDevice(ifindex: 4242, snat: Net.snat)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        #expect(try dp.entries().isEmpty)
    }


    @Test("with IPv4 masquerading disabled traffic passes untouched")
    func ipv4MasqueradeOffUntouched() throws {
        let dp = try TestDatapath.standard(flags: 0)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
    }

    @Test("a non-IPv4 frame passes untouched")
    func nonIPv4Untouched() throws {
        let dp = try TestDatapath.standard()
        let arp = ethernetHeader(type: 0x0806) + [UInt8](repeating: 0x11, count: 28)
        let out = try dp.run(.egress, arp)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == arp)
    }

    @Test("an ICMP error from a pod that quotes no packet passes untouched")
    func icmpErrorUntouched() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .icmp(type: ICMPType.unreachable, code: 3, body: [0, 0, 0, 0] + Array(repeating: 0, count: 28)))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        #expect(try dp.entries().isEmpty)
    }

    @Test("other protocols pass untouched")
    func otherProtocolUntouched() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .raw(proto: 47, bytes: Array(repeating: 0, count: 8)))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
    }
}
