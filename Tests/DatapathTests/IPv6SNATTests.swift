// IPv6 masquerading through BPF_PROG_TEST_RUN: every rewrite with its checksum recomputed in
// Swift, the exclusions, link-scoped traffic (ND, RS/RA, MLD) left alone, extension header
// chains, fragments in and out of order, truncated packets.

import CMasq
import Testing
@testable import Daemon
@testable import Datapath

@Suite("IPv6 SNAT")
struct IPv6SNATTests {
    /// Runs one egress packet from pod1 and its reply, returning both results.
    private func roundTrip(_ dp: TestDatapath, _ l4: L4, reply: (UInt16) -> L4,
                           from pod: PacketIPv6 = Net6.pod1) throws -> (RunResult, RunResult) {
        let out = try dp.run(.egress, ipv6Frame(src: pod, dst: Net6.server, l4))
        let back = try dp.run(.ingress, ipv6Frame(src: Net6.server, dst: Net6.snat, reply(out.parsed6.sport)))
        return (out, back)
    }

    @Test("TCP from a pod leaves with the SNAT address and a valid checksum; the reply goes back to the pod")
    func tcp() throws {
        let dp = try TestDatapath.dualStack()
        let (out, back) = try roundTrip(dp, .tcp(sport: 40000, dport: 443)) {
            .tcp(sport: 443, dport: $0, flags: TCPFlag.syn | TCPFlag.ack, seq: 7, ack: 2)
        }
        #expect(out.verdict == TC.pass)
        let p = out.parsed6
        #expect(p.src == Net6.snat && p.dst == Net6.server)
        #expect(p.sport == 40000 && p.dport == 443)
        #expect(p.checksumOK)
        let r = back.parsed6
        #expect(back.verdict == TC.pass)
        #expect(r.src == Net6.server && r.dst == Net6.pod1 && r.dport == 40000)
        #expect(r.checksumOK)

        let fwd = try #require(try dp.entry6(natKey6(Net6.pod1, Net6.server, sport: 40000, dport: 443, proto: Proto.tcp,
                                                    dir: MASQ_DIR_EGRESS)))
        #expect(PacketIPv6(key: fwd.to_addr) == Net6.snat && host16(fwd.ct.to_port) == 40000)
        #expect(fwd.ct.tcp_state == UInt8(MASQ_TCP_SYN_RECV))
        #expect(try dp.entry6(natKey6(Net6.server, Net6.snat, sport: 443, dport: 40000, proto: Proto.tcp,
                                      dir: MASQ_DIR_INGRESS)) != nil)
        // IPv6 counts apart from IPv4.
        #expect(try dp.stat6(MASQ_STAT_SNAT_PACKETS) == 1)
        #expect(try dp.stat6(MASQ_STAT_REVSNAT_PACKETS) == 1)
        #expect(try dp.stat(MASQ_STAT_SNAT_PACKETS) == 0)
        #expect(try dp.entries().isEmpty)
    }

    @Test("UDP both ways, with checksums recomputed over the IPv6 pseudo header")
    func udp() throws {
        let dp = try TestDatapath.dualStack()
        let (out, back) = try roundTrip(dp, .udp(sport: 40001, dport: 53)) { .udp(sport: 53, dport: $0) }
        #expect(out.parsed6.src == Net6.snat && out.parsed6.checksumOK)
        #expect(out.parsed6.seg.u16(at: 6) != 0)
        #expect(back.parsed6.dst == Net6.pod1 && back.parsed6.dport == 40001 && back.parsed6.checksumOK)
    }

    @Test("ICMPv6 echo: the id plays the port, the checksum covers the pseudo header both ways")
    func echo() throws {
        let dp = try TestDatapath.dualStack()
        let (out, back) = try roundTrip(dp, .icmpEcho(type: ICMPv6Type.echoRequest, id: 7)) {
            .icmpEcho(type: ICMPv6Type.echoReply, id: $0)
        }
        let p = out.parsed6
        #expect(p.src == Net6.snat && p.icmpType == ICMPv6Type.echoRequest)
        #expect(p.sport >= 32768, "id 7 lies outside snat-port-range")
        #expect(p.checksumOK)
        let r = back.parsed6
        #expect(r.dst == Net6.pod1 && r.icmpType == ICMPv6Type.echoReply && r.sport == 7)
        #expect(r.checksumOK)
        // An echo request to the SNAT address is the node's to answer.
        let ping = ipv6Frame(src: Net6.server, dst: Net6.snat, .icmpEcho(type: ICMPv6Type.echoRequest, id: p.sport))
        #expect(try dp.run(.ingress, ping).frame == ping)
    }

    @Test("two pods with the same source port to one server get two ports, and each reply finds its pod")
    func samePortTwoPods() throws {
        let dp = try TestDatapath.dualStack()
        let a = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53)))
        let b = try dp.run(.egress, ipv6Frame(src: Net6.pod2, dst: Net6.server, .udp(sport: 40000, dport: 53)))
        #expect(a.parsed6.sport == 40000)
        #expect(b.parsed6.sport != 40000 && b.parsed6.sport >= 32768)
        #expect(a.parsed6.checksumOK && b.parsed6.checksumOK)
        for (port, pod) in [(a.parsed6.sport, Net6.pod1), (b.parsed6.sport, Net6.pod2)] {
            let r = try dp.run(.ingress, ipv6Frame(src: Net6.server, dst: Net6.snat, .udp(sport: 53, dport: port))).parsed6
            #expect(r.dst == pod && r.dport == 40000 && r.checksumOK)
        }
        #expect(try dp.stat6(MASQ_STAT_ALLOC_OK) == 2)
        #expect(try dp.stat6(MASQ_STAT_ALLOC_KEPT_PORT) == 1)
    }

    @Test("a port the node's own flow uses is not given to a pod")
    func hostTupleProtected() throws {
        let dp = try TestDatapath.dualStack()
        let host = try dp.run(.egress, ipv6Frame(src: Net6.snat, dst: Net6.server, .tcp(sport: 40000, dport: 443)))
        #expect(host.parsed6.src == Net6.snat && host.parsed6.sport == 40000)
        let pod = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443)))
        #expect(pod.parsed6.src == Net6.snat && pod.parsed6.sport != 40000 && pod.parsed6.checksumOK)
        #expect(try dp.stat6(MASQ_STAT_HOST_FLOWS) == 1)
    }

    @Test("exclusions: pod CIDR, native-routing CIDR, the non-masquerade list and node IPs keep the pod's source")
    func exclusions() throws {
        let dp = try TestDatapath.dualStack()
        try dp.addNonMasqCIDRV6("2001:db8:70::", 48)
        try dp.addNodeV6(Net6.node2)
        var cfg = try #require(try dp.config.lookup(UInt32(0), as: masq_config.self))
        cfg.flags |= MASQ_CFG_NONMASQ
        try dp.config.update(UInt32(0), cfg)
        for dst: PacketIPv6 in [Net6.otherPod, "2001:db8:70::5", Net6.node2] {
            let frame = ipv6Frame(src: Net6.pod1, dst: dst, .tcp(sport: 40000, dport: 443))
            let out = try dp.run(.egress, frame)
            #expect(out.verdict == TC.pass && out.frame == frame, "to \(dst)")
        }
        // A native-routing CIDR replaces the pod CIDRs as exclusion 1.
        cfg.flags |= MASQ_CFG_NATIVE_V6
        withUnsafeMutableBytes(of: &cfg.native_v6) { $0.copyBytes(from: PacketIPv6("fd00:10::").bytes) }
        cfg.native_v6_len = 32
        try dp.config.update(UInt32(0), cfg)
        let native = ipv6Frame(src: Net6.pod1, dst: "fd00:10:9::1", .udp(sport: 40000, dport: 53))
        #expect(try dp.run(.egress, native).frame == native)
        let outside = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: "fd00:11::1", .udp(sport: 40000, dport: 53)))
        #expect(outside.parsed6.src == Net6.snat)
        #expect(try dp.entries6().count == 2)
    }

    @Test("IPv6 masquerading off: pods' IPv6 packets pass untouched while IPv4 is still masqueraded")
    func familySwitch() throws {
        let dp = try TestDatapath.dualStack(flags: MASQ_CFG_IPV4_MASQ)
        let frame = ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443))
        #expect(try dp.run(.egress, frame).frame == frame)
        let v4 = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        #expect(v4.parsed.src == Net.snat)
    }

    @Test("a device without an IPv6 address drops the pod packets it would masquerade")
    func noSNATAddress() throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_IPV6_MASQ)
        try dp.addPodCIDRV6(Net6.podCIDR.0, Net6.podCIDR.1)
        let out = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53)))
        #expect(out.verdict == TC.shot)
        #expect(try dp.dropped(DROP_NO_SNAT_ADDRESS) == 1)
    }

    @Test("neighbour discovery, router solicitation and advertisement, MLD and link-local traffic are never touched")
    func linkScopedUntouched() throws {
        let dp = try TestDatapath.dualStack()
        let solicitedNode: PacketIPv6 = "ff02::1:ff00:10"
        let frames: [(TestDatapath.Hook, [UInt8])] = [
            // NS from a pod's global address for its neighbour, to the solicited-node group.
            (.egress, ipv6Frame(src: Net6.pod1, dst: solicitedNode,
                                .icmp(type: ICMPv6Type.neighborSolicitation, code: 0, body: [0, 0, 0, 0] + Net6.pod2.bytes))),
            // NS for neighbour unreachability detection, unicast to the SNAT address.
            (.ingress, ipv6Frame(src: Net6.server, dst: Net6.snat,
                                 .icmp(type: ICMPv6Type.neighborSolicitation, code: 0, body: [0, 0, 0, 0] + Net6.snat.bytes))),
            (.ingress, ipv6Frame(src: Net6.router, dst: Net6.snat,
                                 .icmp(type: ICMPv6Type.neighborAdvertisement, code: 0, body: [0x60, 0, 0, 0] + Net6.router.bytes))),
            (.egress, ipv6Frame(src: Net6.linkLocal, dst: "ff02::2",
                                .icmp(type: ICMPv6Type.routerSolicitation, code: 0, body: [0, 0, 0, 0]))),
            (.ingress, ipv6Frame(src: Net6.router, dst: "ff02::1",
                                 .icmp(type: ICMPv6Type.routerAdvertisement, code: 0, body: [64, 0, 0x07, 0x08] + [UInt8](repeating: 0, count: 8)))),
            // An MLDv2 report behind a hop-by-hop header, as the kernel sends it.
            (.egress, ipv6Frame(src: Net6.pod1, dst: "ff02::16",
                                .icmp(type: ICMPv6Type.mldv2Report, code: 0, body: [0, 0, 0, 0]), ext: [.hopByHop])),
            (.ingress, ipv6Frame(src: Net6.router, dst: "ff02::1",
                                 .icmp(type: ICMPv6Type.mldQuery, code: 0, body: [0, 0, 0, 0] + [UInt8](repeating: 0, count: 16)),
                                 ext: [.hopByHop])),
            // A pod's link-local source, and a pod's packet to a link-local destination.
            (.egress, ipv6Frame(src: Net6.linkLocal, dst: Net6.server, .udp(sport: 40000, dport: 53))),
            (.egress, ipv6Frame(src: Net6.pod1, dst: Net6.router, .udp(sport: 40000, dport: 53))),
        ]
        for (hook, frame) in frames {
            let out = try dp.run(hook, frame)
            #expect(out.verdict == TC.pass && out.frame == frame, "\(hook) \(ParsedFrame6(frame).icmpType)")
        }
        #expect(try dp.entries6().isEmpty)
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("a chain of hop-by-hop, destination options and routing headers is walked and left intact")
    func extensionHeaders() throws {
        let dp = try TestDatapath.dualStack()
        let out = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443),
                                                ext: [.hopByHop, .destOptions, .routing, .destOptions]))
        let p = out.parsed6
        #expect(p.ext == [Proto.hopByHop, Proto.destOptions, Proto.routing, Proto.destOptions])
        #expect(p.src == Net6.snat && p.proto == Proto.tcp && p.sport == 40000 && p.checksumOK)
        let back = try dp.run(.ingress, ipv6Frame(src: Net6.server, dst: Net6.snat,
                                                  .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack), ext: [.destOptions]))
        #expect(back.parsed6.dst == Net6.pod1 && back.parsed6.checksumOK)
    }

    @Test("a chain longer than the datapath walks: a pod's packet is dropped with its reason, others pass untouched")
    func extensionChainTooLong() throws {
        let dp = try TestDatapath.dualStack()
        let long = [IPv6Ext](repeating: .destOptions, count: 9)
        let pod = ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443), ext: long)
        #expect(try dp.run(.egress, pod).verdict == TC.shot)
        #expect(try dp.dropped(DROP_IPV6_EXT_CHAIN) == 1)
        let node = ipv6Frame(src: Net6.notPod, dst: Net6.server, .tcp(sport: 40000, dport: 443), ext: long)
        let reply = ipv6Frame(src: Net6.server, dst: Net6.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.ack), ext: long)
        #expect(try dp.run(.egress, node).frame == node)
        #expect(try dp.run(.ingress, reply).frame == reply)
        // Eight is still walked.
        let eight = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443),
                                                  ext: [.hopByHop] + [IPv6Ext](repeating: .destOptions, count: 7)))
        #expect(eight.parsed6.src == Net6.snat && eight.parsed6.checksumOK)
        #expect(try dp.entries6().count == 2)
    }

    @Test("fragments follow their first fragment's ports both ways; a later fragment first is dropped")
    func fragments() throws {
        let dp = try TestDatapath.dualStack()
        let payload = [UInt8](repeating: 0x5a, count: 100)
        let frags = ipv6Fragments(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53), payload: payload,
                                  chunk: 48, id: 0x0102_0304)
        #expect(frags.count == 3)
        // Out of order: a later fragment before the first cannot be matched and is dropped.
        #expect(try dp.run(.egress, frags[2]).verdict == TC.shot)
        #expect(try dp.dropped(DROP_FRAG_NOT_FOUND) == 1)
        var out: [ParsedFrame6] = []
        for frame in frags {
            let r = try dp.run(.egress, frame)
            #expect(r.verdict == TC.pass)
            out.append(r.parsed6)
        }
        #expect(out.allSatisfy { $0.src == Net6.snat && $0.dst == Net6.server })
        // Reassembled, the datagram's checksum verifies with the new source.
        let seg = out.flatMap(\.seg)
        #expect(onesComplementSum(seg, initial: pseudoHeaderSum6(src: Net6.snat, dst: Net6.server, proto: Proto.udp,
                                                                 length: seg.count)) == 0xffff)
        // The reply, fragmented, goes back to the pod, its later fragments in any order.
        let back = ipv6Fragments(src: Net6.server, dst: Net6.snat, .udp(sport: 53, dport: 40000), payload: payload,
                                 chunk: 48, id: 0x0a0b_0c0d)
        var replies: [ParsedFrame6] = []
        for i in [0, 2, 1] {
            let r = try dp.run(.ingress, back[i])
            #expect(r.verdict == TC.pass)
            replies.append(r.parsed6)
        }
        #expect(replies.allSatisfy { $0.dst == Net6.pod1 })
        let rseg = replies.sorted { ($0.fragmentOffset ?? 0) < ($1.fragmentOffset ?? 0) }.flatMap(\.seg)
        #expect(onesComplementSum(rseg, initial: pseudoHeaderSum6(src: Net6.server, dst: Net6.pod1, proto: Proto.udp,
                                                                  length: rseg.count)) == 0xffff)
        #expect(try dp.stat6(MASQ_STAT_FRAG_TRACKED) == 2)
        #expect(try dp.stat6(MASQ_STAT_FRAG_MATCHED) == 4)
    }

    @Test("truncated packets: a cut L4 header or a payload length beyond the packet is dropped, never translated")
    func truncated() throws {
        let dp = try TestDatapath.dualStack()
        let full = ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443))
        let cutTCP = ipv6Frame(src: Net6.pod1, dst: Net6.server, proto: Proto.tcp, body: Array(full[54..<64]))
        #expect(try dp.run(.egress, cutTCP).verdict == TC.shot)
        #expect(try dp.dropped(DROP_INVALID_L4) == 1)
        let longer = ipv6Frame(src: Net6.pod1, dst: Net6.server, proto: Proto.tcp, body: Array(full[54...]),
                               payloadLength: full.count - 54 + 40)
        #expect(try dp.run(.egress, longer).verdict == TC.shot)
        #expect(try dp.dropped(DROP_INVALID_IPV6) == 1)
        let cutExt = ipv6Frame(src: Net6.pod1, dst: Net6.server, proto: Proto.destOptions, body: [Proto.tcp, 0, 1, 4])
        #expect(try dp.run(.egress, cutExt).verdict == TC.shot)
        #expect(try dp.dropped(DROP_INVALID_IPV6) == 2)
        #expect(try dp.entries6().isEmpty)
    }

    @Test("a connection that came in to a pod keeps its replies untranslated (exclusion 4)")
    func inbound() throws {
        let dp = try TestDatapath.dualStack()
        let syn = ipv6Frame(src: Net6.server, dst: Net6.pod1, .tcp(sport: 50000, dport: 8080))
        #expect(try dp.run(.ingress, syn).frame == syn)
        let key = natKey6(Net6.pod1, Net6.server, sport: 8080, dport: 50000, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)
        let entry = try #require(try dp.entry6(key))
        #expect(entry.ct.flags == UInt8(MASQ_NAT_F_INBOUND))
        let synAck = ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 8080, dport: 50000, flags: TCPFlag.syn | TCPFlag.ack))
        #expect(try dp.run(.egress, synAck).frame == synAck)
        #expect(try dp.entry6(key)?.ct.packets == 1)
        #expect(try dp.stat6(MASQ_STAT_INBOUND_FLOWS) == 1)
    }
}
