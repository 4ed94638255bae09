// IPv4 fragments: the first fragment's ports are remembered (masq_frag_v4) and the datagram's
// later fragments, which carry no L4 header, are translated with them in both directions.

import CMasq
@testable import Datapath
import Testing

@Suite("IPv4 fragments")
struct FragmentTests {
    /// A 100-byte UDP datagram from pod1:40000 to server:53, IP id 0x7777, in 3 fragments.
    private let datagram = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53),
                                     payload: (0..<92).map { UInt8($0) }, ipID: 0x7777)
    private var fragments: [[UInt8]] { fragment(datagram, chunk: 40) }

    /// The UDP checksum of reassembled L4 bytes verifies with these addresses.
    private func udpChecksumOK(_ data: [UInt8], src: PacketIPv4, dst: PacketIPv4) -> Bool {
        onesComplementSum(data, initial: pseudoHeaderSum(src: src.octets, dst: dst.octets, proto: Proto.udp, length: data.count)) == 0xffff
    }

    @Test("a fragmented datagram from a pod leaves with the SNAT address on every fragment and reassembles intact")
    func egressInOrder() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let out = try fragments.map { try dp.run(.egress, $0) }

        #expect(out.allSatisfy { $0.verdict == TC.pass })
        let parsed = out.map { ParsedFragment($0.frame) }
        #expect(parsed.allSatisfy { $0.src == Net.snat && $0.dst == Net.server && $0.ipChecksumOK && $0.id == 0x7777 })
        let data = try #require(reassemble(parsed))
        #expect(data.u16(at: 2) == 53)
        #expect((50000...50099).contains(data.u16(at: 0)))
        #expect(Array(data[8...]) == (0..<92).map { UInt8($0) })
        #expect(udpChecksumOK(data, src: Net.snat, dst: Net.server))
        #expect(try dp.stat(MASQ_STAT_FRAG_TRACKED) == 1)
        #expect(try dp.stat(MASQ_STAT_FRAG_MATCHED) == 2)
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 53, proto: Proto.udp, dir: MASQ_DIR_EGRESS)))
        #expect(fwd.packets == 3)
    }

    @Test("the first fragment's ports are remembered under addresses, IP id and protocol")
    func firstFragmentRecorded() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, fragments[0])
        let key = masq_frag_key_v4(saddr: Net.pod1.raw, daddr: Net.server.raw, id: be16(0x7777), proto: Proto.udp, pad: 0)
        let entry = try #require(try dp.frag(key))

        #expect(host16(entry.sport) == 40000 && host16(entry.dport) == 53)
    }

    @Test("a fragmented reply reaches the pod on every fragment and reassembles intact")
    func ingressInOrder() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let port = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))).parsed.sport
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: port),
                              payload: (0..<200).map { UInt8($0 & 0xff) }, ipID: 0x0101)
        let out = try fragment(reply, chunk: 64).map { try dp.run(.ingress, $0) }

        let parsed = out.map { ParsedFragment($0.frame) }
        #expect(parsed.count == 4)
        #expect(parsed.allSatisfy { $0.dst == Net.pod1 && $0.src == Net.server && $0.ipChecksumOK })
        let data = try #require(reassemble(parsed))
        #expect(data.u16(at: 2) == 40000)
        #expect(udpChecksumOK(data, src: Net.server, dst: Net.pod1))
    }

    @Test("later fragments out of order among themselves are translated once the first is seen")
    func laterFragmentsReordered() throws {
        let dp = try TestDatapath.standard()
        let f = fragment(datagram, chunk: 24)
        #expect(f.count == 5)
        let order = [0, 4, 2, 3, 1]
        let parsed = try order.map { ParsedFragment(try dp.run(.egress, f[$0]).frame) }

        #expect(parsed.allSatisfy { $0.src == Net.snat })
        let data = try #require(reassemble(parsed))
        #expect(udpChecksumOK(data, src: Net.snat, dst: Net.server))
    }

    @Test("a later fragment before its first is dropped and counted as frag_not_found, then the datagram goes through")
    func outOfOrderDropped() throws {
        let dp = try TestDatapath.standard()
        let early = try dp.run(.egress, fragments[2])

        #expect(early.verdict == TC.shot)
        #expect(try dp.dropped(DROP_FRAG_NOT_FOUND) == 1)
        #expect(try dp.entries().isEmpty)

        let out = try fragments.map { try dp.run(.egress, $0) }
        #expect(out.allSatisfy { $0.verdict == TC.pass && ParsedFragment($0.frame).src == Net.snat })
        #expect(try dp.dropped(DROP_FRAG_NOT_FOUND) == 1)
    }

    @Test("a later fragment for the node's address before its first passes untouched: it may be the node's own")
    func ingressOutOfOrderPasses() throws {
        let dp = try TestDatapath.standard()
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000), payload: Array(repeating: 1, count: 64), ipID: 9)
        let tail = fragment(reply, chunk: 32)[1]
        let out = try dp.run(.ingress, tail)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == tail, "it reaches only the node, which reassembles its own datagram")
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("a later fragment coming in to a pod address passes untouched, in order or not")
    func inboundToPodUntouched() throws {
        let dp = try TestDatapath.standard()
        let toPod = ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 5353, dport: 8080), payload: Array(repeating: 3, count: 64))
        let later = fragment(toPod, chunk: 32)[1]
        let out = try dp.run(.ingress, later)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == later)
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("a later fragment to a destination that is not masqueraded passes untouched")
    func excludedDestinationUntouched() throws {
        let dp = try TestDatapath.standard()
        let toPod = ipv4Frame(src: Net.pod1, dst: Net.pod2, .udp(sport: 40000, dport: 53), payload: Array(repeating: 2, count: 64))
        let later = fragment(toPod, chunk: 32)[1]
        let out = try dp.run(.egress, later)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == later)
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("a later fragment of a protocol the NAT does not translate passes untouched")
    func otherProtocolUntouched() throws {
        let dp = try TestDatapath.standard()
        let later = ipv4Frame(src: Net.pod1, dst: Net.server, .raw(proto: 47, bytes: Array(repeating: 0xab, count: 16)), fragment: 0x0003)
        let out = try dp.run(.egress, later)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == later)
    }

    @Test("a fragmented echo request and its fragmented reply are translated by the echo id")
    func fragmentedEcho() throws {
        let dp = try TestDatapath.standard(portMin: 50000, portMax: 50099)
        let ping = ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 0x4242), payload: Array(repeating: 7, count: 100), ipID: 0x10)
        let out = try fragment(ping, chunk: 48).map { ParsedFragment(try dp.run(.egress, $0).frame) }
        #expect(out.allSatisfy { $0.src == Net.snat })
        let sent = try #require(reassemble(out))
        #expect(onesComplementSum(sent) == 0xffff)
        let id = sent.u16(at: 4)

        let pong = ipv4Frame(src: Net.server, dst: Net.snat, .icmpEcho(type: ICMPType.echoReply, id: id), payload: Array(repeating: 7, count: 100), ipID: 0x20)
        let back = try fragment(pong, chunk: 48).map { ParsedFragment(try dp.run(.ingress, $0).frame) }
        #expect(back.allSatisfy { $0.dst == Net.pod1 })
        let got = try #require(reassemble(back))
        #expect(got.u16(at: 4) == 0x4242)
        #expect(onesComplementSum(got) == 0xffff)
    }
}
