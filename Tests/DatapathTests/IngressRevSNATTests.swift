// Ingress: replies translated back to the pod, inbound flows to pods tracked, everything else
// untouched.

import CMasq
@testable import Datapath
import Testing

@Suite("Ingress reverse SNAT")
struct IngressRevSNATTests {
    @Test("a TCP reply to the SNAT address is translated back to the pod with valid checksums")
    func tcpReplyIsTranslatedBack() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 1234, dport: 443))).parsed
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: sent.sport, flags: TCPFlag.syn | TCPFlag.ack))
        let out = try dp.run(.ingress, reply)

        #expect(out.verdict == TC.pass)
        let p = out.parsed
        #expect(p.src == Net.server)
        #expect(p.dst == Net.pod1)
        #expect(p.sport == 443)
        #expect(p.dport == 1234)
        #expect(p.checksumsOK)
        #expect(try dp.stat(MASQ_STAT_REVSNAT_PACKETS) == 1)
    }

    @Test("a UDP reply is translated back to the pod with valid checksums")
    func udpReplyIsTranslatedBack() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53))).parsed
        let out = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: sent.sport)))

        let p = out.parsed
        #expect(p.dst == Net.pod1)
        #expect(p.dport == 1234)
        #expect(p.l4Checksum != 0)
        #expect(p.checksumsOK)
    }

    @Test("a UDP reply with checksum 0 reaches the pod with checksum 0")
    func udpReplyZeroChecksumStaysZero() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 1234, dport: 53))).parsed
        let out = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: sent.sport, zeroChecksum: true)))

        let p = out.parsed
        #expect(p.dst == Net.pod1)
        #expect(p.dport == 1234)
        #expect(p.l4Checksum == 0)
        #expect(p.ipChecksumOK)
    }

    @Test("an ICMP echo reply is translated back to the pod's address and echo id")
    func icmpEchoReplyIsTranslatedBack() throws {
        let dp = try TestDatapath.standard()
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 9))).parsed
        #expect(sent.sport != 9)
        let out = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .icmpEcho(type: ICMPType.echoReply, id: sent.sport)))

        let p = out.parsed
        #expect(p.dst == Net.pod1)
        #expect(p.icmpType == ICMPType.echoReply)
        #expect(p.sport == 9)
        #expect(p.checksumsOK)
    }

    @Test("an ICMP echo request to the SNAT address is the node's and passes untouched")
    func icmpEchoRequestToNodeUntouched() throws {
        let dp = try TestDatapath.standard()
        let sent = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 40000))).parsed
        let request = ipv4Frame(src: Net.server, dst: Net.snat, .icmpEcho(type: ICMPType.echo, id: sent.sport))
        let out = try dp.run(.ingress, request)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == request)
    }

    @Test("a reply counts in the INGRESS entry and marks it as reply seen")
    func replyUpdatesIngressEntry() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.syn | TCPFlag.ack))
        _ = try dp.run(.ingress, reply)

        let rev = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: 443, dport: 40000, proto: Proto.tcp, dir: MASQ_DIR_INGRESS)))
        #expect(rev.packets == 1)
        #expect(rev.bytes == UInt64(reply.count - 14))
        #expect(rev.seen == UInt8(MASQ_SEEN_SYNACK | MASQ_SEEN_REPLY))
        #expect(rev.last_seen >= rev.created)
    }

    @Test("a packet to the SNAT address without a mapping passes untouched")
    func unknownReplyUntouched() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack))
        let out = try dp.run(.ingress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        #expect(try dp.entries().isEmpty)
    }

    @Test("a reply from another remote port does not match the mapping")
    func replyFromOtherPortUntouched() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let frame = ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 444, dport: 40000, flags: TCPFlag.ack))

        #expect(try dp.run(.ingress, frame).frame == frame)
    }

    @Test("a TCP SYN to a pod creates an inbound entry for its replies")
    func synToPodCreatesInboundEntry() throws {
        let dp = try TestDatapath.standard()
        let syn = ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 55555, dport: 8080))
        let out = try dp.run(.ingress, syn)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == syn)
        let entry = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 8080, dport: 55555, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(entry.flags == UInt8(MASQ_NAT_F_INBOUND))
        #expect(entry.seen == UInt8(MASQ_SEEN_SYN))
        #expect(try dp.stat(MASQ_STAT_INBOUND_FLOWS) == 1)
        #expect(try dp.entries().count == 1)
    }

    @Test("a TCP packet to a pod without SYN creates no inbound entry")
    func ackToPodCreatesNothing() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 55555, dport: 8080, flags: TCPFlag.ack)))

        #expect(try dp.entries().isEmpty)
    }

    @Test("an inbound flow from a source the pod's replies would not be masqueraded to is not tracked")
    func inboundFromExcludedSourceNotTracked() throws {
        let dp = try TestDatapath.standard()
        try dp.addNode(Net.node2)
        _ = try dp.run(.ingress, ipv4Frame(src: Net.node2, dst: Net.pod1, .tcp(sport: 55555, dport: 8080)))

        #expect(try dp.entries().isEmpty)
    }
}
