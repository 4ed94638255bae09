// Datapath.apply writes the IPv6 maps in the same reconcile pass as the IPv4 ones, and a
// masq_nat_v6 recreated for another nat-max-entries keeps its flows. Loads the daemon's
// Datapath with pins under a private bpffs root; no device is attached.

@preconcurrency import Glibc
import CMasq
import Logging
import NetworkTypes
import Testing
@testable import Daemon
@testable import Datapath

@Suite("IPv6 map writes", .serialized)
struct MapWritesV6Tests {
    private let logger = Logger(label: "map-writes-v6-test")

    private func withDatapath(entries: UInt32 = 1024, _ body: (Datapath) async throws -> Void) async throws {
        let root = "/sys/fs/bpf/masq-test-\(getpid())-v6maps"
        try? Datapath.uninstall(root: root, logger: logger)
        defer { try? Datapath.uninstall(root: root, logger: logger) }
        var config = DaemonConfig()
        config.bpffsRoot = root
        config.natMaxEntries = entries
        try await body(try Datapath(config: config, logger: logger))
    }

    private func prefix(_ text: String) throws -> IPPrefix { try IPPrefix(text) }
    private func v6(_ text: String) throws -> IPv6Address { try #require(IPv6Address(text)) }

    private func state(pods: [String], nonMasq: [String]?, nodes: [String]) throws -> DesiredState {
        DesiredState(ipv4Enabled: true, ipv6Enabled: true, nonMasqueradeEnabled: true,
                     nativeRoutingV4: nil, nativeRoutingV6: nil, portRange: 32768...65535,
                     devices: [], skippedDevices: [:],
                     podCIDRsV4: [try prefix("10.244.1.0/24")], podCIDRsV6: Set(try pods.map(prefix)),
                     nonMasqueradeV4: [try prefix("10.0.0.0/8")], nonMasqueradeV6: try nonMasq.map { Set(try $0.map(prefix)) },
                     nodeIPsV4: [], nodeIPsV6: Set(try nodes.map(v6)))
    }

    /// The prefixes an LPM map of IPv6 holds, as text.
    private func prefixes(_ dp: Datapath, _ name: String) async throws -> Set<String> {
        Set(try await dp.map(name).keys(as: masq_lpm_v6.self).map { IPPrefix(lpm: $0).description })
    }

    private func addresses(_ dp: Datapath, _ name: String) async throws -> Set<String> {
        Set(try await dp.map(name).keys(as: masq_addr_v6.self).map { IPv6Address($0).description })
    }

    @Test("pod CIDRs, the non-masquerade list and node IPs of IPv6 reach their maps, and follow changes")
    func writes() async throws {
        try await withDatapath { dp in
            try await dp.apply(try state(pods: ["fd00:10:244:1::/64"], nonMasq: ["fe80::/10", "fd00:10::/32"],
                                         nodes: ["fd00:50::3"]))
            #expect(try await prefixes(dp, MASQ_MAP_PODS_V6) == ["fd00:10:244:1::/64"])
            #expect(try await prefixes(dp, MASQ_MAP_NONMASQ_V6) == ["fe80::/10", "fd00:10::/32"])
            #expect(try await addresses(dp, MASQ_MAP_NODES_V6) == ["fd00:50::3"])
            // The IPv4 maps are written in the same pass and keep their own family.
            #expect(try await dp.map(MASQ_MAP_PODS_V4).keys(as: masq_lpm_v4.self).map { IPPrefix(lpm: $0).description } == ["10.244.1.0/24"])

            let report = try await dp.apply(try state(pods: ["fd00:10:244:2::/64"], nonMasq: ["fe80::/10"],
                                                      nodes: ["fd00:50::4", "fd00:50::5"]))
            #expect(try await prefixes(dp, MASQ_MAP_PODS_V6) == ["fd00:10:244:2::/64"])
            #expect(try await prefixes(dp, MASQ_MAP_NONMASQ_V6) == ["fe80::/10"])
            #expect(try await addresses(dp, MASQ_MAP_NODES_V6) == ["fd00:50::4", "fd00:50::5"])
            #expect(report.cidrsAdded == 1 && report.cidrsRemoved == 2)

            // An unknown ip-masq-agent list leaves the map as it is.
            try await dp.apply(try state(pods: ["fd00:10:244:2::/64"], nonMasq: nil, nodes: []))
            #expect(try await prefixes(dp, MASQ_MAP_NONMASQ_V6) == ["fe80::/10"])
            #expect(try await addresses(dp, MASQ_MAP_NODES_V6).isEmpty)
        }
    }

    @Test("nat-max-entries sizes masq_nat_v6, and a resize carries its flows over")
    func carryOver() async throws {
        let root = "/sys/fs/bpf/masq-test-\(getpid())-v6carry"
        try? Datapath.uninstall(root: root, logger: logger)
        defer { try? Datapath.uninstall(root: root, logger: logger) }
        var config = DaemonConfig()
        config.bpffsRoot = root
        config.natMaxEntries = 1024
        var key = masq_nat_key_v6()
        key.saddr = masq_addr_v6(try v6("fd00:10:244:1::10"))
        key.daddr = masq_addr_v6(try v6("fd00:60::1"))
        key.sport = be16(40000)
        key.dport = be16(443)
        key.proto = UInt8(IPPROTO_TCP)
        key.dir = UInt8(MASQ_DIR_EGRESS)
        var entry = masq_nat_entry_v6()
        entry.to_addr = masq_addr_v6(try v6("fd00:50::2"))
        entry.ct.to_port = be16(40001)
        entry.ct.tcp_state = UInt8(MASQ_TCP_ESTABLISHED)
        do {
            let first = try Datapath(config: config, logger: logger)
            let nat = try await first.map(MASQ_MAP_NAT_V6)
            #expect(nat.maxEntries == 1024)
            try nat.update(key, entry)
        }
        config.natMaxEntries = 2048
        let second = try Datapath(config: config, logger: logger)
        let nat = try await second.map(MASQ_MAP_NAT_V6)
        #expect(nat.maxEntries == 2048)
        let kept = try #require(try nat.lookup(key, as: masq_nat_entry_v6.self))
        #expect(IPv6Address(kept.to_addr).description == "fd00:50::2")
        #expect(host16(kept.ct.to_port) == 40001 && kept.ct.tcp_state == UInt8(MASQ_TCP_ESTABLISHED))
    }
}
