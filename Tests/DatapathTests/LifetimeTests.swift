// TCP, UDP and ICMP state as the datapath records it (seen bits of both entries), and the
// lifetime FlowLifetimes gives each state.

import API
import CMasq
import Testing
@testable import Daemon

@Suite("Flow state and lifetimes")
struct LifetimeTests {
    private let lifetimes = FlowLifetimes.default

    /// The state of pod1:40000 -> server:port's pair, from both entries' seen bits.
    private func state(_ dp: Datapath, proto: UInt8, port: UInt16 = 443) throws -> (String, Double) {
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: port, proto: proto, dir: MASQ_DIR_EGRESS)))
        let rev = try dp.entry(natKey(Net.server, Net.snat, sport: port, dport: host16(fwd.to_port), proto: proto, dir: MASQ_DIR_INGRESS))
        let l4 = L4Protocol(number: proto)
        let name = FlowLifetimes.state(proto: l4, seen: fwd.seen | (rev?.seen ?? 0))
        return (name, lifetimes.lifetime(proto: l4, state: name))
    }

    private func out(_ dp: Datapath, _ flags: UInt8) throws {
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: flags)))
    }

    private func back(_ dp: Datapath, _ flags: UInt8) throws {
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: flags)))
    }

    @Test("TCP: SYN is short, the handshake makes it long, FIN or RST short again")
    func tcpTransitions() throws {
        let dp = try Datapath.standard()
        try out(dp, TCPFlag.syn)
        #expect(try state(dp, proto: Proto.tcp) == ("syn-sent", 60))
        try back(dp, TCPFlag.syn | TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == ("established", 21_600))
        try out(dp, TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == ("established", 21_600))
        try out(dp, TCPFlag.fin | TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == ("closing", 10))
        try back(dp, TCPFlag.fin | TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == ("closing", 10))
    }

    @Test("TCP: a reset makes the flow closing")
    func tcpReset() throws {
        let dp = try Datapath.standard()
        try out(dp, TCPFlag.syn)
        try back(dp, TCPFlag.syn | TCPFlag.ack)
        try back(dp, TCPFlag.rst)
        #expect(try state(dp, proto: Proto.tcp) == ("closing", 10))
    }

    @Test("TCP: a new handshake on a closed tuple makes it established again, not closing")
    func tcpTupleReuse() throws {
        let dp = try Datapath.standard()
        try out(dp, TCPFlag.syn)
        try back(dp, TCPFlag.syn | TCPFlag.ack)
        try out(dp, TCPFlag.fin | TCPFlag.ack)
        try back(dp, TCPFlag.fin | TCPFlag.ack)
        try out(dp, TCPFlag.syn)
        try back(dp, TCPFlag.syn | TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == ("established", 21_600))
    }

    @Test("TCP: a flow picked up mid-stream (no SYN seen) is established")
    func tcpPickup() throws {
        let dp = try Datapath.standard()
        try out(dp, TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == ("established", 21_600))
    }

    @Test("UDP: short until a reply, longer after")
    func udp() throws {
        let dp = try Datapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        #expect(try state(dp, proto: Proto.udp, port: 53) == ("unreplied", 30))
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000)))
        #expect(try state(dp, proto: Proto.udp, port: 53) == ("replied", 120))
    }

    @Test("ICMP echo is short")
    func icmp() throws {
        let dp = try Datapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 40000)))
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 0, proto: Proto.icmp, dir: MASQ_DIR_EGRESS)))
        #expect(lifetimes.lifetime(proto: .icmp, seen: fwd.seen) == 30)
    }
}
