// Datapath events (masq_events): what a flow's creation, a failed allocation and a drop report,
// and that nothing is written while nobody listens.

import CMasq
import NetworkTypes
import Testing
@testable import Datapath

@Suite("Datapath events")
struct EventTests {
    private func events(_ dp: TestDatapath) throws -> [NATEvent] {
        try NATEventReader(map: try dp.object.map(MASQ_MAP_EVENTS)).poll(timeoutMilliseconds: 0).events
    }

    private func address(_ ip: PacketIPv4) -> IPAddress { .v4(IPv4Address(networkOrder: ip.raw)) }
    private func address(_ ip: PacketIPv6) -> IPAddress { .v6(IPv6Address(bytes: ip.bytes)) }

    @Test("with events on, a new flow reports its original tuple, the source it leaves with and its port choice")
    func newFlowIsReported() throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_EVENTS)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))

        let reported = try events(dp)
        try #require(reported.count == 1, "\(reported)")
        let event = reported[0]
        #expect(event.kind == .created(keptPort: true, candidates: 1))
        #expect(event.flow == .masquerade && event.proto == .tcp)
        #expect(event.src == address(Net.pod1) && event.sport == 40000)
        #expect(event.dst == address(Net.server) && event.dport == 443)
        #expect(event.translatedSrc == address(Net.snat) && event.translatedSport == 40000)
        #expect(event.ifindex == Net.testIfindex)
        // The flow's later packets report nothing: only its creation is an event.
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .tcp(sport: 40000, dport: 443)))
        #expect(try events(dp).isEmpty)
    }

    @Test("with events off, the datapath writes nothing to the ring")
    func nothingWhileNobodyListens() throws {
        let dp = try TestDatapath.standard()
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40001, dport: 53)))
        #expect(try events(dp).isEmpty)
        #expect(try dp.stat(MASQ_STAT_EVENTS_LOST) == 0)
    }

    @Test("an exhausted port range reports the failed allocation with its candidates, then the drop with its tuple")
    func exhaustionIsReported() throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_EVENTS, portMin: 40000, portMax: 40000)
        _ = try dp.run(.egress, ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53)))
        let out = try dp.run(.egress, ipv4Frame(src: Net.pod2, dst: Net.server, .udp(sport: 40000, dport: 53)))
        #expect(out.verdict == TC.shot)

        let reported = try events(dp)
        try #require(reported.count == 3, "\(reported)")
        #expect(reported[0].kind == .created(keptPort: true, candidates: 1))
        guard case .allocationFailed(DropReason(DROP_NAT_PORTS_EXHAUSTED), let candidates) = reported[1].kind else {
            Issue.record("expected an allocation failure, got \(reported[1])")
            return
        }
        #expect(candidates > 1)
        #expect(reported[1].src == address(Net.pod2) && reported[1].translatedSrc == nil)
        #expect(reported[2].kind == .dropped(DropReason(DROP_NAT_PORTS_EXHAUSTED), egress: true))
        #expect(reported[2].src == address(Net.pod2) && reported[2].sport == 40000 && reported[2].dport == 53)
        #expect(reported[2].proto == .udp)
    }

    @Test("a ring nobody reads loses events and counts them, and the packets are handled all the same")
    func fullRingCountsLostEvents() throws {
        // No SNAT address: each pod packet is a drop, and each drop an event, without table use.
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_EVENTS)
        try dp.addDevice(snat: Net.snat, hasV4: false)
        let frame = ipv4Frame(src: Net.pod1, dst: Net.server, .udp(sport: 40000, dport: 53))
        let capacity = Int(MASQ_EVENTS_RING_BYTES) / (MemoryLayout<masq_event>.size + 8) // 8: the record header
        for _ in 0..<(capacity + 100) {
            #expect(try dp.run(.egress, frame).verdict == TC.shot)
        }
        #expect(try dp.stat(MASQ_STAT_EVENTS_LOST) >= 100)
        let kept = try events(dp)
        #expect(abs(kept.count - capacity) <= 1, "the ring held \(kept.count) of about \(capacity)")
        #expect(kept.allSatisfy { $0.kind == .dropped(DropReason(DROP_NO_SNAT_ADDRESS), egress: true) })
    }

    @Test("an IPv6 drop behind extension headers reports the transport protocol and ports beneath them; behind a later fragment, its protocol only")
    func ipv6DropWalksExtensionHeaders() throws {
        // Pod CIDRs but no IPv6 address on the device: every pod packet is a no_snat_address drop.
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_IPV6_MASQ | MASQ_CFG_EVENTS)
        try dp.addPodCIDRV6(Net6.podCIDR.0, Net6.podCIDR.1)
        let chains: [[IPv6Ext]] = [[], [.hopByHop], [.hopByHop, .destOptions, .routing],
                                   [.destOptions, .fragment(offset: 0, more: true, id: 7)]]
        for ext in chains {
            let frame = ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53), ext: ext)
            #expect(try dp.run(.egress, frame).verdict == TC.shot, "\(ext)")
            let reported = try events(dp)
            try #require(reported.count == 1, "\(ext): \(reported)")
            #expect(reported[0].kind == .dropped(DropReason(DROP_NO_SNAT_ADDRESS), egress: true), "\(ext)")
            #expect(reported[0].proto == .udp && reported[0].sport == 40000 && reported[0].dport == 53, "\(ext): \(reported[0])")
            #expect(reported[0].src == address(Net6.pod1) && reported[0].dst == address(Net6.server))
        }
        // A later fragment carries no ports: what follows its header is payload.
        let later = ipv6Frame(src: Net6.pod1, dst: Net6.server, proto: 17, body: [0x9c, 0x40, 0, 53, 0, 0, 0, 0],
                              ext: [.hopByHop, .fragment(offset: 8, more: false, id: 7)])
        #expect(try dp.run(.egress, later).verdict == TC.shot)
        let reported = try events(dp)
        try #require(reported.count == 1, "\(reported)")
        #expect(reported[0].proto == .udp && reported[0].sport == 0 && reported[0].dport == 0, "\(reported[0])")
    }

    @Test("an IPv6 flow reports its original tuple and translation; an inbound one its own tuple; later packets nothing")
    func newIPv6FlowIsReported() throws {
        let dp = try TestDatapath.dualStack(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_IPV6_MASQ | MASQ_CFG_EVENTS)
        _ = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53)))
        _ = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .udp(sport: 40000, dport: 53)))
        _ = try dp.run(.ingress, ipv6Frame(src: Net6.server, dst: Net6.pod2, .tcp(sport: 5555, dport: 80)))

        let reported = try events(dp)
        try #require(reported.count == 2, "\(reported)")
        let new = reported[0]
        #expect(new.kind == .created(keptPort: true, candidates: 1) && new.flow == .masquerade && new.proto == .udp)
        #expect(new.src == address(Net6.pod1) && new.sport == 40000 && new.dst == address(Net6.server) && new.dport == 53)
        #expect(new.translatedSrc == address(Net6.snat) && new.translatedSport == 40000)
        #expect(new.ifindex == Net.testIfindex)
        let inbound = reported[1]
        #expect(inbound.kind == .created(keptPort: true, candidates: 0) && inbound.flow == .inbound && inbound.proto == .tcp)
        #expect(inbound.src == address(Net6.pod2) && inbound.sport == 80 && inbound.dst == address(Net6.server) && inbound.dport == 5555)
        #expect(inbound.translatedSrc == nil)
    }

    @Test("an exhausted IPv6 port range reports the failed allocation, then the drop with the packet's IPv6 tuple")
    func ipv6ExhaustionIsReported() throws {
        let dp = try TestDatapath.standard(flags: MASQ_CFG_IPV4_MASQ | MASQ_CFG_IPV6_MASQ | MASQ_CFG_EVENTS,
                                           portMin: 40000, portMax: 40000)
        try dp.addDeviceV6(snat: Net6.snat)
        try dp.addPodCIDRV6(Net6.podCIDR.0, Net6.podCIDR.1)
        _ = try dp.run(.egress, ipv6Frame(src: Net6.pod1, dst: Net6.server, .tcp(sport: 40000, dport: 443)))
        let out = try dp.run(.egress, ipv6Frame(src: Net6.pod2, dst: Net6.server, .tcp(sport: 40000, dport: 443)))
        #expect(out.verdict == TC.shot)

        let reported = try events(dp)
        try #require(reported.count == 3, "\(reported)")
        #expect(reported[0].kind == .created(keptPort: true, candidates: 1) && reported[0].src == address(Net6.pod1))
        guard case .allocationFailed(DropReason(DROP_NAT_PORTS_EXHAUSTED), let candidates) = reported[1].kind else {
            Issue.record("expected an allocation failure, got \(reported[1])")
            return
        }
        #expect(candidates > 1)
        #expect(reported[1].src == address(Net6.pod2) && reported[1].dst == address(Net6.server) && reported[1].translatedSrc == nil)
        #expect(reported[2].kind == .dropped(DropReason(DROP_NAT_PORTS_EXHAUSTED), egress: true))
        #expect(reported[2].src == address(Net6.pod2) && reported[2].dst == address(Net6.server))
        #expect(reported[2].proto == .tcp && reported[2].sport == 40000 && reported[2].dport == 443)
    }
}
