// TCP, UDP and ICMP state as the datapath records it (the TCP state machine, ct_tcp_next4, and
// the seen bits of both entries), and the lifetime FlowLifetimes gives each state.

import NetworkTypes
import CMasq
@testable import Datapath
import Testing

@Suite("Flow state and lifetimes")
struct LifetimeTests {
    private let lifetimes = FlowLifetimes.default

    /// The state of pod1:40000 -> server:port's pair: the datapath's TCP state, which both
    /// entries hold alike, and the seen bits of both.
    private func state(_ dp: TestDatapath, proto: UInt8, port: UInt16 = 443) throws -> (FlowState, Double) {
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: port, proto: proto, dir: MASQ_DIR_EGRESS)))
        let rev = try #require(try dp.entry(natKey(Net.server, Net.snat, sport: port, dport: host16(fwd.to_port), proto: proto, dir: MASQ_DIR_INGRESS)))
        #expect(fwd.tcp_state == rev.tcp_state, "both entries of a pair hold the flow's state")
        let l4 = L4Protocol(number: proto)
        let name = FlowLifetimes.state(proto: l4, tcpState: fwd.tcp_state, seen: fwd.seen | rev.seen)
        return (name, lifetimes.lifetime(proto: l4, state: name))
    }

    private func out(_ dp: TestDatapath, _ flags: UInt8, seq: UInt32 = 1000, ack: UInt32 = 0) throws {
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443, flags: flags, seq: seq, ack: ack)))
    }

    private func back(_ dp: TestDatapath, _ flags: UInt8, seq: UInt32 = 9000, ack: UInt32 = 0) throws {
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .tcp(sport: 443, dport: 40000, flags: flags, seq: seq, ack: ack)))
    }

    /// SYN, SYN-ACK, ACK: an established flow. Every segment carries 4 bytes of payload, so the
    /// pod's next sequence number is 1005 after its SYN, the server's 9005 after its SYN-ACK.
    private func handshake(_ dp: TestDatapath) throws {
        try out(dp, TCPFlag.syn)
        try back(dp, TCPFlag.syn | TCPFlag.ack, ack: 1001)
        try out(dp, TCPFlag.ack, seq: 1001, ack: 9001)
    }

    @Test("TCP: SYN and SYN-ACK stay on the SYN lifetime; the handshake's last ACK makes it established")
    func tcpHandshake() throws {
        let dp = try TestDatapath.standard()
        try out(dp, TCPFlag.syn)
        #expect(try state(dp, proto: Proto.tcp) == (.synSent, 60))
        try back(dp, TCPFlag.syn | TCPFlag.ack, ack: 1001)
        #expect(try state(dp, proto: Proto.tcp) == (.synRecv, 60), "a SYN-ACK alone is not a connection")
        try out(dp, TCPFlag.ack, seq: 1001, ack: 9001)
        #expect(try state(dp, proto: Proto.tcp) == (.established, 21_600))
    }

    @Test("TCP: the first FIN is fin-wait, an answer close-wait, the second FIN closing")
    func tcpClose() throws {
        let dp = try TestDatapath.standard()
        try handshake(dp)
        try out(dp, TCPFlag.fin | TCPFlag.ack, seq: 1005, ack: 9001)
        #expect(try state(dp, proto: Proto.tcp) == (.finWait, 120), "one FIN is a half-close, not the closing timeout")
        try back(dp, TCPFlag.ack, seq: 9001, ack: 1006)
        #expect(try state(dp, proto: Proto.tcp) == (.closeWait, 60))
        try back(dp, TCPFlag.ack, seq: 9001, ack: 1006)
        #expect(try state(dp, proto: Proto.tcp) == (.closeWait, 60), "the open side may go on sending")
        try back(dp, TCPFlag.fin | TCPFlag.ack, seq: 9005, ack: 1006)
        #expect(try state(dp, proto: Proto.tcp) == (.closing, 10))
    }

    @Test("TCP: a RST within its sender's window closes, and late segments or FINs do not re-open it; a stray RST far outside does not close")
    func tcpReset() throws {
        let dp = try TestDatapath.standard()
        try handshake(dp)
        try back(dp, TCPFlag.rst, seq: 9001 &+ 0x4000_0000)
        #expect(try state(dp, proto: Proto.tcp) == (.established, 21_600), "an out-of-window RST is ignored")
        try back(dp, TCPFlag.rst, seq: 9001)
        #expect(try state(dp, proto: Proto.tcp) == (.closing, 10))
        try out(dp, TCPFlag.ack, seq: 1005, ack: 9001)
        #expect(try state(dp, proto: Proto.tcp) == (.closing, 10), "a segment in flight stays closing")
        try out(dp, TCPFlag.fin | TCPFlag.ack, seq: 1005, ack: 9001)
        #expect(try state(dp, proto: Proto.tcp) == (.closing, 10), "a late FIN does not make it fin-wait again")
        try back(dp, TCPFlag.fin | TCPFlag.ack, seq: 9001, ack: 1006)
        #expect(try state(dp, proto: Proto.tcp) == (.closing, 10))
    }

    @Test("TCP: a RST answering a SYN counts when it acknowledges the SYN")
    func tcpResetAnsweringSyn() throws {
        let dp = try TestDatapath.standard()
        try out(dp, TCPFlag.syn)
        try back(dp, TCPFlag.rst | TCPFlag.ack, seq: 0, ack: 77)
        #expect(try state(dp, proto: Proto.tcp) == (.synSent, 60), "a RST acknowledging something else is not this flow's")
        try back(dp, TCPFlag.rst | TCPFlag.ack, seq: 0, ack: 1005)
        #expect(try state(dp, proto: Proto.tcp) == (.closing, 10))
    }

    @Test("TCP: a new handshake on a closed tuple starts over at syn-sent, then established")
    func tcpTupleReuse() throws {
        let dp = try TestDatapath.standard()
        try handshake(dp)
        try out(dp, TCPFlag.fin | TCPFlag.ack, seq: 1005, ack: 9001)
        try back(dp, TCPFlag.fin | TCPFlag.ack, seq: 9001, ack: 1006)
        #expect(try state(dp, proto: Proto.tcp).0 == .closing)
        try handshake(dp)
        #expect(try state(dp, proto: Proto.tcp) == (.established, 21_600))
        try out(dp, TCPFlag.fin | TCPFlag.ack, seq: 1005, ack: 9001)
        #expect(try state(dp, proto: Proto.tcp).0 == .finWait, "the old connection's FINs were forgotten")
    }

    @Test("TCP: a flow picked up mid-stream (no SYN seen) is established")
    func tcpPickup() throws {
        let dp = try TestDatapath.standard()
        try out(dp, TCPFlag.ack)
        #expect(try state(dp, proto: Proto.tcp) == (.established, 21_600))
    }

    @Test("TCP into a pod: the remote's SYN and the pod's SYN-ACK stay on the SYN lifetime")
    func inboundHandshake() throws {
        let dp = try TestDatapath.standard()
        let key = natKey(Net.pod1, Net.server, sport: 80, dport: 5555, proto: Proto.tcp, dir: MASQ_DIR_EGRESS)
        func inboundState() throws -> FlowState {
            let entry = try #require(try dp.entry(key))
            return FlowLifetimes.state(proto: .tcp, tcpState: entry.tcp_state, seen: entry.seen)
        }
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80, flags: TCPFlag.syn, seq: 500)))
        #expect(try inboundState() == .synSent)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 80, dport: 5555, flags: TCPFlag.syn | TCPFlag.ack, seq: 7000, ack: 501)))
        #expect(try inboundState() == .synRecv)
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80, flags: TCPFlag.ack, seq: 501, ack: 7001)))
        #expect(try inboundState() == .established)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 80, dport: 5555, flags: TCPFlag.fin | TCPFlag.ack, seq: 7001, ack: 505)))
        #expect(try inboundState() == .finWait)
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80, flags: TCPFlag.ack, seq: 505, ack: 7002)))
        #expect(try inboundState() == .closeWait)
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.pod1, .tcp(sport: 5555, dport: 80, flags: TCPFlag.fin | TCPFlag.ack, seq: 505, ack: 7002)))
        #expect(try inboundState() == .closing)
    }

    @Test("UDP: short until a reply, longer after")
    func udp() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        #expect(try state(dp, proto: Proto.udp, port: 53) == (.unreplied, 30))
        _ = try dp.run(.ingress, ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000)))
        #expect(try state(dp, proto: Proto.udp, port: 53) == (.replied, 120))
    }

    @Test("ICMP echo is short")
    func icmp() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .icmpEcho(type: ICMPType.echo, id: 40000)))
        let fwd = try #require(try dp.entry(natKey(Net.pod1, Net.server, sport: 40000, dport: 0, proto: Proto.icmp, dir: MASQ_DIR_EGRESS)))
        #expect(lifetimes.lifetime(proto: .icmp, state: FlowLifetimes.state(proto: .icmp, tcpState: fwd.tcp_state, seen: fwd.seen)) == 30)
    }
}
