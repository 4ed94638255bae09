// The masquerade exclusions (native-routing or pod CIDRs, the non-masquerade list, cluster
// nodes, replies of inbound connections), each on its own.

import CMasq
@testable import Datapath
import Testing

@Suite("Masquerade exclusions")
struct ExclusionTests {
    @Test("1: a destination inside the native-routing CIDR is not masqueraded")
    func nativeRoutingCIDRExcluded() throws {
        let dp = try TestDatapath.standard()
        try dp.setConfig(native: ("10.0.0.0", 8))
        let frame = ipv4Frame(src: Net.pod1, dst: "10.200.3.4", .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        #expect(try dp.entries().isEmpty)
    }

    @Test("1: with a native-routing CIDR set, a pod CIDR destination outside it is masqueraded")
    func nativeRoutingCIDRReplacesPodCIDR() throws {
        let dp = try TestDatapath.standard()
        try dp.addPodCIDR("172.20.0.0", 16)
        try dp.setConfig(native: ("10.0.0.0", 8))
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: "172.20.1.1", .tcp(sport: 40000, dport: 443)))

        #expect(out.parsed.src == Net.snat)
    }

    @Test("1: without a native-routing CIDR, a destination inside the pod CIDRs is not masqueraded")
    func podCIDRExcludedWithoutNative() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.otherPod, .tcp(sport: 40000, dport: 443))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
    }

    @Test("2: a destination in the non-masquerade list is not masqueraded when the agent is on")
    func nonMasqueradeCIDRExcluded() throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_NONMASQ)
        try dp.addNonMasqCIDR("93.184.0.0", 16)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
    }

    @Test("2: the non-masquerade list does not apply when the agent is off")
    func nonMasqueradeListIgnoredWhenOff() throws {
        let dp = try TestDatapath.standard()
        try dp.addNonMasqCIDR("93.184.0.0", 16)
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))

        #expect(out.parsed.src == Net.snat)
    }

    @Test("3: a destination that is a cluster node is not masqueraded")
    func clusterNodeExcluded() throws {
        let dp = try TestDatapath.standard()
        try dp.addNode(Net.node2)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.node2, .tcp(sport: 40000, dport: 10250))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
    }

    @Test("4: a pod's reply on a connection that came in to it is not masqueraded")
    func replyOfInboundFlowExcluded() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 55555, dport: 8080)))
        let synAck = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 8080, dport: 55555, flags: TCPFlag.syn | TCPFlag.ack))
        let out = try dp.run(.egress, synAck)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == synAck)
        let entry = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 8080, dport: 55555, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)))
        #expect(entry.packets == 1)
        #expect(entry.seen & UInt8(MASQ_SEEN_REPLY) != 0)
        #expect(try dp.entries().count == 1)
    }

    @Test("4: a pod's echo reply to an inbound ping is not masqueraded")
    func echoReplyOfInboundPingExcluded() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .icmpEcho(type: ICMPType.echo, id: 777)))
        let reply = ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echoReply, id: 777))
        let out = try dp.run(.egress, reply)

        #expect(out.frame == reply)
        #expect(try dp.entries().count == 1)
    }

    @Test("4: a UDP reply to an inbound datagram is not masqueraded")
    func udpReplyOfInboundFlowExcluded() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .udp(sport: 5353, dport: 53)))
        let reply = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 53, dport: 5353))

        #expect(try dp.run(.egress, reply).frame == reply)
    }
}
