// What the device says about a packet: where its L3 header starts (Ethernet or an L3 device),
// whether it has an SNAT address (fail closed), and which frames are not the device's to
// translate (not addressed to the host). Replies are translated on any masquerading device.

import CMasq
import Testing
@testable import Daemon
@testable import Datapath

/// Addresses for packets run as an L3 device's (no Ethernet header). BPF_PROG_TEST_RUN always
/// sets skb->protocol from bytes 12-13 of the data as if they were an Ethernet type; on an IPv4
/// packet at offset 0 those are the first two bytes of the source address, so each packet's
/// source here starts with 8.0 (0x0800, ETH_P_IP), as the real device's skb->protocol says.
private enum L3Net {
    static let pod: PacketIPv4 = "8.0.1.5"
    static let podCIDR: (PacketIPv4, UInt32) = ("8.0.1.0", 24)
    static let server: PacketIPv4 = "8.0.0.8"
    static let snat: PacketIPv4 = "172.16.0.2"
}

/// The IPv4 packet of an Ethernet frame from `ipv4Frame`, as an L3 device carries it. The test
/// run also refuses (EINVAL) a packet whose bytes after the would-be Ethernet header cannot hold
/// the IPv4 header its type announces, so the packets here carry 32 bytes of payload.
private func l3Packet(_ frame: [UInt8]) -> [UInt8] { Array(frame[14...]) }

private let payload = [UInt8](repeating: 0x6d, count: 32)

/// An L3 packet as the program left it, parsed (the parser reads after an Ethernet header).
private func parsedL3(_ packet: [UInt8]) -> ParsedFrame {
    ParsedFrame([UInt8](repeating: 0, count: 14) + packet)
}

@Suite("Devices: L3 offset, no SNAT address, frames not for the host, replies on any device")
struct DeviceTests {
    /// A node whose test device is an L3 device (l2_hdr_len 0) masquerading to L3Net.snat.
    private func l3Datapath() throws -> TestDatapath {
        let dp = try TestDatapath()
        try dp.setConfig(portMin: 50000, portMax: 50099)
        try dp.addDevice(snat: L3Net.snat, l2HeaderLength: 0)
        try dp.addPodCIDR(L3Net.podCIDR.0, L3Net.podCIDR.1)
        return dp
    }

    @Test("on an L3 device a pod's TCP packet at offset 0 is masqueraded, its reply translated back, checksums valid")
    func l3DeviceTCP() throws {
        let dp = try l3Datapath()
        let packet = l3Packet(ipv4Frame(src: L3Net.pod, dst: L3Net.server, .tcp(sport: 1234, dport: 443)))
        let out = try dp.run(.egress, packet)

        #expect(out.verdict == TC.pass)
        #expect(out.frame.count == packet.count, "nothing was added in front of the IPv4 header")
        let sent = parsedL3(out.frame)
        #expect(sent.src == L3Net.snat)
        #expect((50000...50099).contains(sent.sport))
        #expect(sent.checksumsOK)
        #expect(try dp.droppedTotal() == 0)

        let reply = l3Packet(ipv4Frame(src: L3Net.server, dst: L3Net.snat,
                                       .tcp(sport: 443, dport: sent.sport, flags: TCPFlag.syn | TCPFlag.ack)))
        let back = try dp.run(.ingress, reply)
        #expect(back.verdict == TC.pass)
        let p = parsedL3(back.frame)
        #expect(p.dst == L3Net.pod)
        #expect(p.dport == 1234)
        #expect(p.checksumsOK)
        #expect(try dp.stat(MASQ_STAT_REVSNAT_PACKETS) == 1)
    }

    @Test("on an L3 device a pod's UDP datagram and its reply are translated at offset 0")
    func l3DeviceUDP() throws {
        let dp = try l3Datapath()
        let sent = parsedL3(try dp.run(.egress, l3Packet(ipv4Frame(src: L3Net.pod, dst: L3Net.server,
                                                                   .udp(sport: 5353, dport: 53), payload: payload))).frame)
        #expect(sent.src == L3Net.snat)
        #expect(sent.checksumsOK)
        let back = parsedL3(try dp.run(.ingress, l3Packet(ipv4Frame(src: L3Net.server, dst: L3Net.snat,
                                                                    .udp(sport: 53, dport: sent.sport), payload: payload))).frame)
        #expect(back.dst == L3Net.pod)
        #expect(back.dport == 5353)
        #expect(back.checksumsOK)
    }

    @Test("an Ethernet frame read at an L3 device's offset is not translated: the offset comes from the device")
    func l3OffsetIsTheDevices() throws {
        let dp = try TestDatapath.standard()
        try dp.addDevice(snat: Net.snat, l2HeaderLength: 0)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.shot, "an Ethernet header is no IPv4 header")
        #expect(try dp.dropped(DROP_INVALID_IPV4) == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("without an IPv4 SNAT address a pod packet that needs masquerading is dropped and counted, never sent with the pod's address")
    func noSNATAddressDrops() throws {
        let dp = try TestDatapath.standard()
        try dp.addDevice(snat: Net.snat, hasV4: false)
        try dp.addNode(Net.node2)
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        #expect(out.verdict == TC.shot)
        #expect(try dp.dropped(DROP_NO_SNAT_ADDRESS) == 1)
        #expect(try dp.entries().isEmpty, "a dropped packet opens no flow")

        // Excluded destinations need no address and still pass: another node, another pod.
        for dst in [Net.node2, Net.pod2] {
            let frame = ipv4Frame(src: Net.pod1, dst: dst, .udp(sport: 40000, dport: 53))
            let passed = try dp.run(.egress, frame)
            #expect(passed.verdict == TC.pass, "to \(dst)")
            #expect(passed.frame == frame, "to \(dst)")
        }
        #expect(try dp.dropped(DROP_NO_SNAT_ADDRESS) == 1)
    }

    @Test("without an SNAT address the replies of a connection that came in to a pod still leave")
    func noSNATAddressInboundReplyPasses() throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ)
        try dp.setConfig(native: ("10.0.0.0", 16))
        let syn = ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 50000, dport: 80))
        #expect(try dp.run(.ingress, syn).verdict == TC.pass)
        try dp.addDevice(snat: Net.snat, hasV4: false)

        let reply = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 80, dport: 50000, flags: TCPFlag.syn | TCPFlag.ack))
        let out = try dp.run(.egress, reply)
        #expect(out.verdict == TC.pass)
        #expect(out.frame == reply)
        #expect(try dp.dropped(DROP_NO_SNAT_ADDRESS) == 0)
    }

    @Test("a device that gets its address back masquerades again")
    func addressComesBack() throws {
        let dp = try TestDatapath.standard()
        try dp.addDevice(snat: Net.snat, hasV4: false)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))
        #expect(try dp.run(.egress, frame).verdict == TC.shot)
        try dp.addDevice(snat: Net.snat)

        let out = try dp.run(.egress, frame)
        #expect(out.verdict == TC.pass)
        #expect(out.parsed.src == Net.snat)
    }

    @Test("a reply for another masquerading device's SNAT address is translated on the device it arrives on")
    func replyOnAnotherDevice() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53))).parsed
        #expect(sent.src == Net.snat)
        // The flow left by the device that holds Net.snat (now ifindex 7); the reply comes
        // back on the test device, whose own address is another one.
        let ownAddress: PacketIPv4 = "192.168.1.10"
        try dp.addDevice(ifindex: 7, snat: Net.snat)
        try dp.addDevice(snat: ownAddress)

        let out = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: sent.sport)))
        #expect(out.verdict == TC.pass)
        let p = out.parsed
        #expect(p.dst == Net.pod1)
        #expect(p.dport == 1234)
        #expect(p.checksumsOK)
        #expect(try dp.stat(MASQ_STAT_REVSNAT_PACKETS) == 1)
    }

    @Test("a packet for an address that is no masquerading device's passes ingress untouched, even one an entry names")
    func replyForUnknownAddressUntouched() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53))).parsed
        // The device's address moved on: masqd rewrote its entry and the SNAT address set.
        try dp.object.map(MASQ_MAP_SNAT_V4).delete(Net.snat.raw)
        try dp.addDevice(snat: "192.168.1.10")

        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: sent.sport))
        let out = try dp.run(.ingress, reply)
        #expect(out.verdict == TC.pass)
        #expect(out.frame == reply)
        #expect(try dp.stat(MASQ_STAT_REVSNAT_PACKETS) == 0)
    }

    @Test("frames not addressed to this host (PACKET_OTHERHOST, multicast) are neither translated nor tracked on ingress",
          arguments: [[0x02, 0, 0, 0, 0, 0x09], [0x01, 0x00, 0x5e, 0, 0, 0x01]] as [[UInt8]])
    func notForThisHost(destination mac: [UInt8]) throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53))).parsed
        let before = try dp.entries().count

        var reply = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: sent.sport))
        reply.replace(at: 0, with: mac)
        let out = try dp.run(.ingress, reply)
        #expect(out.verdict == TC.pass)
        #expect(out.frame == reply, "not reverse-translated")

        // A SYN to a pod (native routing) opens an inbound entry only when it is for this host.
        try dp.setConfig(native: ("10.0.0.0", 16))
        var syn = ipv4Frame(src: Net.server, dst: Net.pod2, .tcp(sport: 50000, dport: 80))
        syn.replace(at: 0, with: mac)
        #expect(try dp.run(.ingress, syn).frame == syn)
        #expect(try dp.entries().count == before, "no entry was created")
        #expect(try dp.stat(MASQ_STAT_INBOUND_FLOWS) == 0)

        // The same SYN addressed to the host is tracked: the filter is what kept it out.
        syn.replace(at: 0, with: [0, 0, 0, 0, 0, 0])
        _ = try dp.run(.ingress, syn)
        #expect(try dp.stat(MASQ_STAT_INBOUND_FLOWS) == 1)
    }
}
