// Malformed and truncated packets: never rewritten; dropped with a named reason when they
// would have needed translating.

import CMasq
@testable import Datapath
import Testing

@Suite("Malformed packets")
struct MalformedPacketTests {
    // A frame shorter than Ethernet + 20 bytes never reaches the program under
    // BPF_PROG_TEST_RUN (the kernel refuses it with EINVAL); ipv4_load refuses it the same way.
    @Test("an IPv4 header whose options run past the datagram is dropped as invalid_ipv4")
    func headerCutShortDropped() throws {
        let dp = try TestDatapath.standard()
        var frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        frame[14] = 0x4f // ihl 15: a 60-byte header in a 44-byte datagram
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
        #expect(try dp.dropped(DROP_INVALID_IPV4) == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("an IPv4 header with ihl below 5 is dropped as invalid_ipv4")
    func ihlBelowFiveDropped() throws {
        let dp = try TestDatapath.standard()
        var frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        frame[14] = 0x44
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
        #expect(try dp.dropped(DROP_INVALID_IPV4) == 1)
    }

    @Test("a total length beyond the packet is dropped as invalid_ipv4")
    func totalLengthBeyondPacketDropped() throws {
        let dp = try TestDatapath.standard()
        var frame = ipv4Frame(src: Net.server, dst: Net.snat, .udp(sport: 53, dport: 40000))
        frame.replace(at: 16, with: be(1400))
        let out = try dp.run(.ingress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
        #expect(try dp.dropped(DROP_INVALID_IPV4) == 1)
    }

    @Test("a truncated TCP header from a pod is dropped as invalid_l4 and creates no mapping")
    func truncatedTCPDropped() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .raw(proto: Proto.tcp, bytes: be(40000) + be(443) + [0, 0, 0, 1, 0, 0]))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
        #expect(try dp.dropped(DROP_INVALID_L4) == 1)
        #expect(try dp.entries().isEmpty)
    }

    @Test("a truncated UDP header from a pod is dropped as invalid_l4")
    func truncatedUDPDropped() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .raw(proto: Proto.udp, bytes: be(40000) + be(53)))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
        #expect(try dp.dropped(DROP_INVALID_L4) == 1)
    }

    @Test("a UDP header cut by the IPv4 total length is dropped even when padding follows")
    func udpCutByTotalLengthDropped() throws {
        let dp = try TestDatapath.standard()
        // Ethernet padding after a 4-byte "UDP header": the bytes are there, the datagram is not.
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .raw(proto: Proto.udp, bytes: be(40000) + be(53))) + [UInt8](repeating: 0, count: 20)
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
    }

    @Test("a truncated TCP reply to the SNAT address is dropped and never rewritten")
    func truncatedReplyDropped() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        let frame = ipv4Frame(src: Net.server, dst: Net.snat, .raw(proto: Proto.tcp, bytes: be(443) + be(40000) + [0, 0, 0, 1]))
        let out = try dp.run(.ingress, frame)

        #expect(out.verdict == TC.shot)
        #expect(out.frame == frame)
        #expect(try dp.dropped(DROP_INVALID_L4) == 1)
    }

    @Test("a truncated packet from outside the pod CIDRs passes untouched")
    func truncatedNonPodUntouched() throws {
        let dp = try TestDatapath.standard()
        let frame = ipv4Frame(src: Net.notPod, dst: Net.server, .raw(proto: Proto.tcp, bytes: be(40000) + be(443)))
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
        #expect(try dp.droppedTotal() == 0)
    }

    @Test("a malformed packet on a device that does not masquerade passes untouched")
    func malformedOnOtherDeviceUntouched() throws {
        let dp = try TestDatapath.standard(flags: 0)
        var frame = ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443))
        frame[14] = 0x43
        let out = try dp.run(.egress, frame)

        #expect(out.verdict == TC.pass)
        #expect(out.frame == frame)
    }
}
