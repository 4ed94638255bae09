// The established fast path (issue 12): a flow's exclusions are decided when it is created and
// again only after a config change (masq_config.generation), last_seen is stored once a second,
// and the reply entry is checked on the same beat.

import CMasq
import Testing
@testable import Daemon
@testable import Datapath

@Suite("Established path")
struct EstablishedPathTests {
    private func udp(_ dp: TestDatapath, _ src: PacketIPv4 = Net.pod1, dst: PacketIPv4 = Net.server,
                     sport: UInt16 = 40000) throws -> RunResult {
        try dp.run(.egress, ipv4Frame(src: src, dst: dst, .udp(sport: sport, dport: 53)))
    }

    private func udpKey(_ src: PacketIPv4 = Net.pod1, dst: PacketIPv4 = Net.server, sport: UInt16 = 40000) -> masq_nat_key_v4 {
        natKey(src, dst, sport: sport, dport: 53, proto: Proto.udp, dir: MASQ_DIR_EGRESS)
    }

    private func generation(_ dp: TestDatapath) throws -> UInt16 {
        try #require(try dp.config.lookup(UInt32(0), as: masq_config.self)).generation
    }

    @Test("an established flow's exclusions are not read per packet: a map change counts once the generation moves on")
    func exclusionsDecidedPerFlow() throws {
        let dp = try TestDatapath.standard()
        #expect(try udp(dp).parsed.src == Net.snat)
        let fwd = try #require(try dp.entry(udpKey()))
        #expect(fwd.cfg_gen == (try generation(dp)), "the entry holds the generation it was decided by")

        // The pod CIDR goes, but the config's generation stays: the flow goes on as decided.
        try dp.pods.delete(masq_lpm_v4(prefixlen: Net.podCIDR.1, addr: Net.podCIDR.0.raw))
        #expect(try udp(dp).parsed.src == Net.snat)

        try dp.advanceGeneration()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))
        let out = try dp.run(.egress, frame)
        #expect(out.verdict == TC.pass && out.frame == frame, "no longer a pod's: untouched")
        #expect(try dp.entries().isEmpty, "its pair is deleted")
    }

    @Test("a destination the config now excludes: the established flow passes untranslated from its next packet, pair deleted",
          arguments: ["non-masquerade list", "cluster node"])
    func configChangeExcludesEstablishedFlow(_ how: String) throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_NONMASQ)
        #expect(try udp(dp).parsed.src == Net.snat)
        #expect(try udp(dp, dst: Net.server2, sport: 40001).parsed.src == Net.snat)
        #expect(try dp.entries().count == 4)

        if how == "cluster node" {
            try dp.addNode(Net.server)
        } else {
            try dp.addNonMasqCIDR(Net.server, 32)
        }
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))
        let out = try dp.run(.egress, frame)
        #expect(out.verdict == TC.pass && out.frame == frame)
        #expect(try dp.entry(udpKey()) == nil)
        #expect(try dp.entry(natKey(Net.server, Net.snat, sport: 53, dport: 40000, proto: Proto.udp, dir: MASQ_DIR_INGRESS)) == nil)
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000))
        #expect(try dp.run(.ingress, reply).frame == reply, "a late reply has no entry to be translated by")

        // The other flow is decided again too, keeps its port, and holds the new generation.
        let other = try udp(dp, dst: Net.server2, sport: 40001).parsed
        #expect(other.src == Net.snat && other.sport == 40001)
        #expect(try #require(try dp.entry(udpKey(dst: Net.server2, sport: 40001))).cfg_gen == (try generation(dp)))
        #expect(try dp.entries().count == 2)
    }

    @Test("a flow carried over without a generation (0) decides its exclusions at its next packet")
    func carriedOverFlowDecidedAgain() throws {
        let dp = try TestDatapath.standard()
        _ = try udp(dp)
        var fwd = try #require(try dp.entry(udpKey()))
        fwd.cfg_gen = 0
        try dp.nat.update(udpKey(), fwd)
        try dp.addNode(Net.node2)  // an unrelated change: the flow stays masqueraded

        #expect(try udp(dp).parsed.src == Net.snat)
        #expect(try #require(try dp.entry(udpKey())).cfg_gen == (try generation(dp)))
    }

    @Test("a busy flow stores last_seen once a second, and counts every packet")
    func lastSeenThrottled() throws {
        let dp = try TestDatapath.standard()
        _ = try udp(dp)
        let rkey = natKey(Net.server, Net.snat, sport: 53, dport: 40000, proto: Proto.udp, dir: MASQ_DIR_INGRESS)
        let reply = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000))
        _ = try dp.run(.ingress, reply)  // the first reply adds MASQ_SEEN_REPLY: stored at once
        let fwd0 = try #require(try dp.entry(udpKey()))
        let rev0 = try #require(try dp.entry(rkey))

        _ = try udp(dp)
        _ = try dp.run(.ingress, reply)
        let fwd1 = try #require(try dp.entry(udpKey()))
        let rev1 = try #require(try dp.entry(rkey))
        #expect(fwd1.packets == 2 && rev1.packets == 2)
        #expect(fwd1.last_seen == fwd0.last_seen && rev1.last_seen == rev0.last_seen, "within the second: not stored")

        try dp.age(udpKey())
        try dp.age(rkey)
        _ = try udp(dp)
        _ = try dp.run(.ingress, reply)
        #expect(try #require(try dp.entry(udpKey())).last_seen >= fwd0.last_seen, "stored again")
        #expect(try #require(try dp.entry(rkey)).last_seen >= rev0.last_seen, "stored again")
    }

    @Test("a segment that moves the TCP state stores last_seen at once, inside the second")
    func tcpStateChangeStoresLastSeen() throws {
        let dp = try TestDatapath.standard()
        let key = natKey(Net.pod1, Net.server, sport: 40000, dport: 443, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)
        func out(_ flags: UInt8, seq: UInt32) throws {
            _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: flags, seq: seq, ack: 1)))
        }
        try out(TCPFlag.syn, seq: 100)
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: TCPFlag.syn | TCPFlag.ack, seq: 1, ack: 101)))
        try out(TCPFlag.ack, seq: 101)
        let established = try #require(try dp.entry(key))
        #expect(established.tcp_state == UInt8(MASQ_TCP_ESTABLISHED))

        // Half a second later, inside the refresh interval: a plain segment leaves last_seen.
        try dp.age(key, milliseconds: 500)
        let aged = try #require(try dp.entry(key)).last_seen
        try out(TCPFlag.ack, seq: 105)
        #expect(try #require(try dp.entry(key)).last_seen == aged)
        try out(TCPFlag.fin | TCPFlag.ack, seq: 109)
        let closing = try #require(try dp.entry(key))
        #expect(closing.tcp_state == UInt8(MASQ_TCP_FIN_WAIT))
        #expect(closing.last_seen >= established.last_seen, "the FIN stored last_seen")
    }

    @Test("a lost INGRESS entry of a busy flow is checked for once its last_seen is due, and restored")
    func lostReverseRestoredOnRefresh() throws {
        let dp = try TestDatapath.standard()
        _ = try udp(dp)
        let rkey = natKey(Net.server, Net.snat, sport: 53, dport: 40000, proto: Proto.udp, dir: MASQ_DIR_INGRESS)
        try dp.nat.delete(rkey)

        #expect(try udp(dp).parsed.src == Net.snat)
        #expect(try dp.entry(rkey) == nil, "within the second, established packets touch one entry")
        try dp.age(udpKey())
        #expect(try udp(dp).parsed.sport == 40000)
        let rev = try #require(try dp.entry(rkey))
        #expect(PacketIPv4(raw: rev.to_addr) == Net.pod1 && host16(rev.to_port) == 40000)
        #expect(try dp.stat(MASQ_STAT_REVERSE_RESTORED) == 1)
    }
}
