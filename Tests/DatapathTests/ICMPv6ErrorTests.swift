// ICMPv6 errors about masqueraded flows (destination unreachable, packet too big, time
// exceeded, parameter problem), translated both ways, with the ICMPv6 checksum (over the
// outer pseudo header) and the quoted L4 checksum (over the quoted addresses) recomputed from
// scratch in Swift.

import CMasq
@testable import Datapath
import Testing

/// Every ICMPv6 error type with a code or two each, and the word after the checksum it
/// carries (packet too big: the MTU; parameter problem: a pointer into the quote).
let icmpv6ErrorCases: [(type: UInt8, code: UInt8, word: UInt32)] = [
    (ICMPv6Type.destUnreachable, 0, 0), (ICMPv6Type.destUnreachable, 1, 0), (ICMPv6Type.destUnreachable, 3, 0),
    (ICMPv6Type.destUnreachable, 4, 0), (ICMPv6Type.packetTooBig, 0, 1280), (ICMPv6Type.timeExceeded, 0, 0),
    (ICMPv6Type.timeExceeded, 1, 0), (ICMPv6Type.paramProblem, 0, 6), (ICMPv6Type.paramProblem, 1, 40),
]

/// A router on the path with a global address (errors from a link-local one are the link's).
private let router6: PacketIPv6 = "2001:db8:ff::1"

@Suite("ICMPv6 errors")
struct ICMPv6ErrorTests {
    /// The pod's own port (or echo id) of a flow of `kind`, outside the port range below.
    private static func podPort(_ kind: QuotedFlow) -> UInt16 { kind == .echo ? 0x4242 : 40000 }

    /// A pod packet of `kind` to the server, with extension headers `ext`.
    private func podPacket(_ kind: QuotedFlow, ext: [IPv6Ext] = []) -> [UInt8] {
        switch kind {
        case .tcp: ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443, flags: TCPFlag.ack),
                             payload: Array("a quoted tcp segment".utf8), ext: ext)
        case .udp: ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53), payload: Array("dns?".utf8), ext: ext)
        case .echo: ipv6Frame(src: Net6.pod1, dst: Net6.server, .icmpEcho(type: ICMPv6Type.echoRequest, id: 0x4242), ext: ext)
        }
    }

    /// A datapath where pod1's flow of `kind` went out translated (the port range excludes its
    /// own port, so address and port both change). Returns the packet as it left the node.
    private func masqueradedFlow(_ kind: QuotedFlow, ext: [IPv6Ext] = []) throws -> (TestDatapath, left: [UInt8], snatPort: UInt16) {
        let dp = try TestDatapath.dualStack(portMin: 50000, portMax: 50099)
        let out = try dp.run(.egress, podPacket(kind, ext: ext))
        #expect(out.parsed6.src == Net6.snat)
        #expect(out.parsed6.sport != Self.podPort(kind))
        return (dp, out.frame, out.parsed6.sport)
    }

    @Test("an ingress error about a masqueraded flow reaches the pod, its word kept, every checksum valid",
          arguments: icmpv6ErrorCases.indices, QuotedFlow.allCases)
    func ingressErrorTranslated(_ index: Int, _ kind: QuotedFlow) throws {
        let (type, code, word) = icmpv6ErrorCases[index]
        let (dp, left, _) = try masqueradedFlow(kind)
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: type, code: code, word: word, quoting: left)
        let before = try dp.entries6().map { $0.1.ct.packets }

        let out = try dp.run(.ingress, error)

        #expect(out.verdict == TC.pass)
        let e = ParsedICMPv6Error(out.frame)
        #expect(e.type == type && e.code == code)
        #expect(e.word == word, "the MTU or pointer is kept")
        #expect(e.outer.src == router6 && e.outer.dst == Net6.pod1)
        #expect(e.innerSrc == Net6.pod1 && e.innerDst == Net6.server)
        #expect(e.innerSport == Self.podPort(kind))
        #expect(e.outer.checksumOK, "ICMPv6 checksum over the new pseudo header and quote")
        #expect(e.innerL4ChecksumOK == true, "quoted L4 checksum over the quoted addresses")
        #expect(out.frame.count == error.count)
        #expect(try dp.stat6(MASQ_STAT_ICMP_ERRORS) == 1)
        #expect(try dp.stat(MASQ_STAT_ICMP_ERRORS) == 0, "counted as IPv6")
        #expect(try dp.entries6().map { $0.1.ct.packets } == before, "an error is not a packet of the flow")
    }

    @Test("a pod's error about a reply that came back through the NAT leaves as the remote's packet would have been seen",
          arguments: [ICMPv6Type.destUnreachable, ICMPv6Type.packetTooBig, ICMPv6Type.timeExceeded, ICMPv6Type.paramProblem],
          QuotedFlow.allCases)
    func egressErrorAboutTranslatedReply(_ type: UInt8, _ kind: QuotedFlow) throws {
        let (dp, _, snatPort) = try masqueradedFlow(kind)
        // The reply as the pod received it (after reverse SNAT), and the pod's error about it.
        let received: [UInt8]
        switch kind {
        case .tcp: received = ipv6Frame(src: Net6.server, dst: Net6.pod1, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack),
                                        payload: Array("reply".utf8))
        case .udp: received = ipv6Frame(src: Net6.server, dst: Net6.pod1, .udp(sport: 53, dport: 40000), payload: Array("answer".utf8))
        case .echo: received = ipv6Frame(src: Net6.server, dst: Net6.pod1, .icmpEcho(type: ICMPv6Type.echoReply, id: 0x4242))
        }
        let word: UInt32 = type == ICMPv6Type.packetTooBig ? 1400 : 0
        let error = icmpv6ErrorFrame(src: Net6.pod1, dst: Net6.server, type: type, code: 4, word: word, quoting: received)
        let out = try dp.run(.egress, error)

        #expect(out.verdict == TC.pass)
        let e = ParsedICMPv6Error(out.frame)
        #expect(e.outer.src == Net6.snat && e.outer.dst == Net6.server)
        #expect(e.innerSrc == Net6.server && e.innerDst == Net6.snat)
        #expect(kind == .echo ? e.innerSport == snatPort : e.innerDport == snatPort)
        #expect(e.word == word)
        #expect(e.outer.checksumOK)
        #expect(e.innerL4ChecksumOK == true)
        #expect(try dp.stat6(MASQ_STAT_ICMP_ERRORS) == 1)
    }

    @Test("the node's own error about a reply it forwards to a pod leaves with the flow's port in the quote")
    func nodeErrorAboutPodFlow() throws {
        let (dp, _, snatPort) = try masqueradedFlow(.udp)
        let received = ipv6Frame(src: Net6.server, dst: Net6.pod1, .udp(sport: 53, dport: 40000), payload: Array("answer".utf8))
        let error = icmpv6ErrorFrame(src: Net6.snat, dst: Net6.server, type: ICMPv6Type.packetTooBig, code: 0, word: 1280,
                                     quoting: received)
        let e = ParsedICMPv6Error(try dp.run(.egress, error).frame)

        #expect(e.outer.src == Net6.snat && e.word == 1280)
        #expect(e.innerDst == Net6.snat && e.innerDport == snatPort)
        #expect(e.outer.checksumOK && e.innerL4ChecksumOK == true)
    }

    @Test("a quoted packet with extension headers is walked and translated", arguments: QuotedFlow.allCases)
    func quotedExtensionHeaders(_ kind: QuotedFlow) throws {
        let (dp, left, _) = try masqueradedFlow(kind, ext: [.hopByHop, .destOptions, .routing])
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.packetTooBig, code: 0, word: 1280, quoting: left)
        let e = ParsedICMPv6Error(try dp.run(.ingress, error).frame)

        #expect(e.outer.dst == Net6.pod1 && e.innerSrc == Net6.pod1)
        #expect(e.innerProto == ParsedFrame6(left).proto, "the parser walked the quoted chain")
        #expect(e.innerSport == Self.podPort(kind))
        #expect(e.outer.checksumOK && e.innerL4ChecksumOK == true)
        #expect(e.word == 1280)
    }

    @Test("a quoted first fragment is translated by its ports; a quoted later fragment passes untouched")
    func quotedFragments() throws {
        let dp = try TestDatapath.dualStack(portMin: 50000, portMax: 50099)
        let frags = ipv6Fragments(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53),
                                  payload: Array(repeating: 0x61, count: 64), chunk: 48, id: 77)
        let left = try frags.map { try dp.run(.egress, $0).frame }
        let first = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.timeExceeded, code: 1, quoting: left[0])
        let e = ParsedICMPv6Error(try dp.run(.ingress, first).frame)
        #expect(e.outer.dst == Net6.pod1 && e.innerSrc == Net6.pod1 && e.innerSport == 40000)
        #expect(e.outer.checksumOK)

        let later = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.timeExceeded, code: 1, quoting: left[1])
        #expect(try dp.run(.ingress, later).frame == later)
    }

    @Test("a quoted chain longer than the walk, or cut by the quote's end, passes untouched")
    func quotedChainUnwalkable() throws {
        let long = Array(repeating: IPv6Ext.destOptions, count: 9)
        let (dp, left, _) = try masqueradedFlow(.udp)
        // The flow's own packet as it left, its chain lengthened in the quote: no flow is
        // guessed from a chain the datapath does not walk to its end.
        let quoted = ipv6Frame(src: Net6.snat, dst: Net6.server, proto: Proto.udp, body: ParsedFrame6(left).seg, ext: long)
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.destUnreachable, code: 1, quoting: quoted)
        #expect(try dp.run(.ingress, error).frame == error)

        let cut = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.destUnreachable, code: 1,
                                   quoting: ipv6Frame(src: Net6.snat, dst: Net6.server, proto: Proto.udp,
                                                      body: ParsedFrame6(left).seg, ext: [.hopByHop]), quote: 44)
        #expect(try dp.run(.ingress, cut).frame == cut)
        #expect(try dp.stat6(MASQ_STAT_ICMP_ERRORS) == 0)
    }

    @Test("a TCP quote cut after 8 bytes is translated; its checksum, not quoted, is left alone")
    func shortTCPQuote() throws {
        let (dp, left, _) = try masqueradedFlow(.tcp)
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.timeExceeded, code: 0, quoting: left, quote: 48)
        let out = try dp.run(.ingress, error)
        let e = ParsedICMPv6Error(out.frame)

        #expect(e.outer.dst == Net6.pod1 && e.innerSrc == Net6.pod1 && e.innerSport == 40000)
        #expect(e.outer.checksumOK)
        #expect(e.innerL4ChecksumOK == nil)
        #expect(out.frame.count == error.count)
    }

    @Test("a quote shorter than the IPv6 header, or than 8 bytes of L4 header, passes untouched",
          arguments: [24, 40, 44])
    func truncatedQuoteUntouched(_ quote: Int) throws {
        let (dp, left, _) = try masqueradedFlow(.udp)
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.destUnreachable, code: 3, quoting: left, quote: quote)
        let out = try dp.run(.ingress, error)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == error)
        #expect(try dp.stat6(MASQ_STAT_ICMP_ERRORS) == 0)
    }

    @Test("a quoted UDP datagram without checksum (RFC 6935) keeps 0; a computed 0 is never written")
    func zeroUDPChecksum() throws {
        let dp = try TestDatapath.dualStack(portMin: 50000, portMax: 50099)
        let left = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53, zeroChecksum: true))).frame
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.destUnreachable, code: 4, quoting: left)
        let e = ParsedICMPv6Error(try dp.run(.ingress, error).frame)

        #expect(e.innerSport == 40000 && e.innerSrc == Net6.pod1)
        #expect(e.innerL4Checksum == 0)
        #expect(e.outer.checksumOK)
    }

    @Test("an ingress error that matches no flow passes untouched", arguments: QuotedFlow.allCases)
    func unmatchedIngressUntouched(_ kind: QuotedFlow) throws {
        let (dp, _, _) = try masqueradedFlow(kind)
        let other = ipv6Frame(src: Net6.snat, dst: Net6.server2, .udp(sport: 50050, dport: 53))
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.packetTooBig, code: 0, word: 1280, quoting: other)
        let out = try dp.run(.ingress, error)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == error)
        #expect(try dp.stat6(MASQ_STAT_ICMP_ERRORS) == 0)
        #expect(try dp.entries6().count == 2)
    }

    @Test("an egress error that matches no flow passes untouched and opens nothing")
    func unmatchedEgressUntouched() throws {
        let dp = try TestDatapath.dualStack()
        let received = ipv6Frame(src: Net6.server, dst: Net6.pod1, .udp(sport: 53, dport: 40000))
        let error = icmpv6ErrorFrame(src: Net6.pod1, dst: Net6.server, type: ICMPv6Type.destUnreachable, code: 4, quoting: received)
        let out = try dp.run(.egress, error)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == error)
        #expect(try dp.entries6().isEmpty)
    }

    @Test("a pod's error about a flow that came in to it keeps the pod's address")
    func inboundFlowErrorUntouched() throws {
        let dp = try TestDatapath.dualStack()
        let received = ipv6Frame(src: Net6.server, dst: Net6.pod1, .udp(sport: 5353, dport: 8080))
        _ = try dp.run(.ingress, received)
        #expect(try dp.entries6().count == 1, "the inbound flow is tracked")
        let error = icmpv6ErrorFrame(src: Net6.pod1, dst: Net6.server, type: ICMPv6Type.destUnreachable, code: 4, quoting: received)

        #expect(try dp.run(.egress, error).frame == error)
    }

    @Test("an error about the node's own identity-mapped flow passes untouched")
    func hostFlowErrorUntouched() throws {
        let dp = try TestDatapath.dualStack()
        let left = ipv6Frame(src: Net6.snat, dst: Net6.server, .udp(sport: 40000, dport: 53))
        _ = try dp.run(.egress, left)
        #expect(try dp.stat6(MASQ_STAT_HOST_FLOWS) == 1)
        let error = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.destUnreachable, code: 4, quoting: left)

        #expect(try dp.run(.ingress, error).frame == error)
    }

    @Test("informational ICMPv6 (an echo request to the node, neighbour solicitation) is not taken for an error")
    func informationalUntouched() throws {
        let (dp, left, _) = try masqueradedFlow(.udp)
        let ns = icmpv6ErrorFrame(src: router6, dst: Net6.snat, type: ICMPv6Type.neighborSolicitation, code: 0, quoting: left)
        #expect(try dp.run(.ingress, ns).frame == ns)
        #expect(try dp.stat6(MASQ_STAT_ICMP_ERRORS) == 0)
    }
}
