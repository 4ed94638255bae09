// ICMP errors about masqueraded flows, translated per RFC 5508 in both directions, with every
// checksum (outer IPv4, ICMP, quoted IPv4, quoted L4) verified from scratch.

import CMasq
@testable import Datapath
import Testing

/// The quoted protocols an error can be about.
enum QuotedFlow: String, CaseIterable, CustomTestStringConvertible {
    case tcp, udp, echo
    var testDescription: String { rawValue }
}

/// Every code of destination unreachable (RFC 792, 1122, 1812) and of time exceeded.
let icmpErrorCases: [(type: UInt8, code: UInt8)] =
    (0...15).map { (ICMPType.unreachable, UInt8($0)) } + [(ICMPType.timeExceeded, 0), (ICMPType.timeExceeded, 1)]

/// A router on the path that reports errors.
private let router: PacketIPv4 = "203.0.113.1"

@Suite("ICMP errors (RFC 5508)")
struct ICMPErrorTests {
    /// A datapath where pod1's flow of `kind` went out translated (the port range excludes its
    /// own port, so port and address both change). Returns the packet as it left the node.
    private func masqueradedFlow(_ kind: QuotedFlow) throws -> (TestDatapath, left: [UInt8], snatPort: UInt16) {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let sent: [UInt8]
        switch kind {
        case .tcp: sent = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack), payload: Array("a quoted tcp segment".utf8))
        case .udp: sent = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53), payload: Array("dns?".utf8))
        case .echo: sent = ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 0x4242))
        }
        let out = try dp.run(.egress, sent)
        #expect(out.parsed.src == Net.snat)
        return (dp, out.frame, out.parsed.sport)
    }

    @Test("an ingress error about a masqueraded flow is translated back to the pod, every checksum valid",
          arguments: icmpErrorCases.indices, QuotedFlow.allCases)
    func ingressErrorTranslated(_ index: Int, _ kind: QuotedFlow) throws {
        let (type, code) = icmpErrorCases[index]
        let (dp, left, snatPort) = try masqueradedFlow(kind)
        let mtu: UInt16 = code == 4 && type == ICMPType.unreachable ? 1400 : 0
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: type, code: code, mtu: mtu, quoting: left)
        let before = try dp.entries().map { $0.1.packets }

        let out = try dp.run(.ingress, error)

        #expect(out.verdict == TC.pass)
        let e = ParsedICMPError(out.frame)
        #expect(e.type == type && e.code == code)
        #expect(e.outer.src == router)
        #expect(e.outer.dst == Net.pod1)
        #expect(e.innerSrc == Net.pod1)
        #expect(e.innerDst == Net.server)
        #expect(e.innerSport == (kind == .echo ? 0x4242 : 40000))
        #expect(e.mtu == mtu, "the next-hop MTU is preserved")
        #expect(e.outer.ipChecksumOK, "outer IPv4 checksum")
        #expect(e.outer.l4ChecksumOK, "ICMP checksum")
        #expect(e.innerIPChecksumOK, "quoted IPv4 checksum")
        #expect(e.innerL4ChecksumOK == true, "quoted L4 checksum")
        #expect(snatPort != (kind == .echo ? 0x4242 : 40000))
        #expect(try dp.stat(MASQ_STAT_ICMP_ERRORS) == 1)
        #expect(try dp.entries().map { $0.1.packets } == before, "an error is not a packet of the flow")
    }

    @Test("fragmentation needed keeps its next-hop MTU and restores the quoted port")
    func fragNeededRestoresInnerPort() throws {
        let (dp, left, _) = try masqueradedFlow(.udp)
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: ICMPType.unreachable, code: 4, mtu: 1280, quoting: left)
        let e = ParsedICMPError(try dp.run(.ingress, error).frame)

        #expect(e.mtu == 1280)
        #expect(e.outer.dst == Net.pod1 && e.innerSrc == Net.pod1 && e.innerSport == 40000)
        #expect(e.checksumsOK)
    }

    @Test("a TCP quote cut after 8 bytes is translated; its checksum, not quoted, is left alone")
    func shortTCPQuote() throws {
        let (dp, left, _) = try masqueradedFlow(.tcp)
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: ICMPType.timeExceeded, code: 0, quoting: left, quote: 28)
        let out = try dp.run(.ingress, error)
        let e = ParsedICMPError(out.frame)

        #expect(e.outer.dst == Net.pod1 && e.innerSrc == Net.pod1 && e.innerSport == 40000)
        #expect(e.outer.checksumsOK && e.innerIPChecksumOK)
        #expect(e.innerL4ChecksumOK == nil)
        #expect(out.frame.count == error.count)
    }

    @Test("a quoted UDP datagram without checksum keeps checksum 0")
    func zeroUDPChecksumStaysZero() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let left = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53, zeroChecksum: true))).frame
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: ICMPType.unreachable, code: 3, quoting: left)
        let e = ParsedICMPError(try dp.run(.ingress, error).frame)

        #expect(e.innerSport == 40000)
        #expect(e.innerL4Checksum == 0)
        #expect(e.checksumsOK)
    }

    @Test("a pod's port unreachable about a reply that came back through the NAT leaves translated",
          arguments: QuotedFlow.allCases)
    func egressErrorAboutTranslatedReply(_ kind: QuotedFlow) throws {
        let (dp, _, snatPort) = try masqueradedFlow(kind)
        // The reply as the pod received it (after reverse SNAT), and the error about it.
        let received: [UInt8]
        switch kind {
        case .tcp: received = ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack), payload: Array("reply".utf8))
        case .udp: received = ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 53, dport: 40000), payload: Array("answer".utf8))
        case .echo: received = ipv4Frame(src: Net.server, dst: Net.pod1, .icmpEcho(type: ICMPType.echoReply, id: 0x4242))
        }
        let error = icmpErrorFrame(src: Net.pod1, dst: Net.server, type: ICMPType.unreachable, code: 3, quoting: received)
        let out = try dp.run(.egress, error)

        #expect(out.verdict == TC.pass)
        let e = ParsedICMPError(out.frame)
        #expect(e.outer.src == Net.snat)
        #expect(e.outer.dst == Net.server)
        #expect(e.innerSrc == Net.server)
        #expect(e.innerDst == Net.snat)
        #expect(kind == .echo ? e.innerSport == snatPort : e.innerDport == snatPort)
        #expect(e.checksumsOK)
        #expect(e.innerL4ChecksumOK == true)
        #expect(try dp.stat(MASQ_STAT_ICMP_ERRORS) == 1)
    }

    @Test("an ingress error that matches no flow passes untouched", arguments: QuotedFlow.allCases)
    func unmatchedIngressUntouched(_ kind: QuotedFlow) throws {
        let (dp, _, _) = try masqueradedFlow(kind)
        let other = ipv4Frame(src: Net.snat, dst: Net.server2, .udp(sport: 50050, dport: 53))
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: ICMPType.unreachable, code: 1, quoting: other)
        let out = try dp.run(.ingress, error)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == error)
        #expect(try dp.stat(MASQ_STAT_ICMP_ERRORS) == 0)
        #expect(try dp.entries().count == 2)
    }

    @Test("an egress error that matches no flow passes untouched and opens nothing")
    func unmatchedEgressUntouched() throws {
        let dp = try TestDatapath.standard()
        let received = ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 53, dport: 40000))
        let error = icmpErrorFrame(src: Net.pod1, dst: Net.server, type: ICMPType.unreachable, code: 3, quoting: received)
        let out = try dp.run(.egress, error)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == error)
        #expect(try dp.entries().isEmpty)
    }

    @Test("a pod's error about a flow that came in to it keeps the pod's address")
    func inboundFlowErrorUntouched() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 5353, dport: 8080)))
        let received = ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 5353, dport: 8080))
        let error = icmpErrorFrame(src: Net.pod1, dst: Net.server, type: ICMPType.unreachable, code: 3, quoting: received)
        let out = try dp.run(.egress, error)

        #expect(out.frame == error)
    }

    @Test("an error about the node's own identity-mapped flow passes untouched")
    func hostFlowErrorUntouched() throws {
        let dp = try TestDatapath.standard()
        let left = ipv4Frame(src: Net.snat, dst: Net.server, .udp(sport: 40000, dport: 53))
        _ = try dp.run(.egress, left)
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: ICMPType.unreachable, code: 3, quoting: left)
        let out = try dp.run(.ingress, error)

        #expect(out.frame == error)
    }

    @Test("an error quoting less than a whole IPv4 header passes untouched")
    func truncatedQuoteUntouched() throws {
        let (dp, left, _) = try masqueradedFlow(.udp)
        let error = icmpErrorFrame(src: router, dst: Net.snat, type: ICMPType.unreachable, code: 3, quoting: left, quote: 16)
        let out = try dp.run(.ingress, error)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == error)
    }

    @Test("other ICMP types (redirect, parameter problem) pass untouched")
    func otherTypesUntouched() throws {
        let (dp, left, _) = try masqueradedFlow(.udp)
        for type: UInt8 in [5, 12] {
            let msg = icmpErrorFrame(src: router, dst: Net.snat, type: type, code: 0, quoting: left)
            #expect(try dp.run(.ingress, msg).frame == msg)
        }
    }
}
