import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// Uplinks of every kind, replies on another uplink, and link flaps, in the `Sandbox` topology
/// plus, where a scenario needs it:
///
///     [node] tun0 172.16.0.1/30 ═ relay ═ tun0 172.16.0.2/30 [outside]  (and 100.2.0.2 on its lo)
///     [node] ext1 100.1.0.1/24 ──────────── eth1 100.1.0.2/24 [outside]
///
/// This kernel has no ipip, gre or wireguard, so the L3 uplink is a tun device in each
/// namespace joined by `netprobe.py tunrelay` (IFF_TUN | IFF_NO_PI: packets start at the IPv4
/// header, no Ethernet header, as on WireGuard).
@Suite("uplinks: L3 devices, replies on another device, link flaps", .serialized)
struct LinkE2ETests {
    static let tunNodeIP = "172.16.0.1"
    static let tunPeerIP = "172.16.0.2"
    /// On the outside host, reachable from the node only through tun0.
    static let tunFarIP = "100.2.0.2"

    @Test("a tun (L3) uplink beside the Ethernet uplink masquerades TCP and UDP; status shows each device's kind")
    func tunUplink() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.addTunUplink()
            try await sandbox.startServer(name: "server-tun", bind: Self.tunFarIP, tcp: true)
            let masqd = try await sandbox.startMasqd(mode: .tcx, devices: "\(Sandbox.device),tun0")

            for kind in ["tcp", "udp"] {
                let port = kind == "tcp" ? Sandbox.tcpPort : Sandbox.udpPort
                let viaTun = try await sandbox.probe(sandbox.pods[0], [kind, "--dst", "\(Self.tunFarIP):\(port)"])
                #expect(observedIP(viaTun) == Self.tunNodeIP, "\(kind) through tun0: \(viaTun)\n\(sandbox.deviceLog)")
                let viaEther = try await sandbox.probe(sandbox.pods[1], [kind, "--dst", "\(Sandbox.outsideIP):\(port)"])
                #expect(observedIP(viaEther) == Sandbox.nodeIP, "\(kind) through \(Sandbox.device): \(viaEther)")
            }
            let seen = sandbox.output("server-tun").split(separator: "\n")
            #expect(!seen.isEmpty && !seen.contains { $0.contains("10.244.1.") }, "the tun side saw: \(seen)")
            #expect(try sandbox.dropCount(130) == 0, "invalid_ipv4 drops: the L3 offset was wrong")

            let status = try await sandbox.masqClient(["status"])
            #expect(status.succeeded, "\(status)")
            #expect(status.stdout.contains("tun0 (none(tun)) \(Self.tunNodeIP)"), "\(status.stdout)")
            #expect(status.stdout.contains("\(Sandbox.device) (ether(veth)) \(Sandbox.nodeIP)"), "\(status.stdout)")
            #expect(masqd.isRunning)
        }
    }

    @Test("replies that come back on another masquerading device are translated back to the pod (TCP and UDP)")
    func repliesOnAnotherDevice() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.addUplink(up: true)
            // Asymmetric return: the outside host sends everything for the node's ext0 address
            // through the node's ext1.
            try await sandbox.sh(["ip", "-n", sandbox.outside, "route", "add", "\(Sandbox.nodeIP)/32",
                                  "via", DeviceE2ETests.uplinkIP, "dev", "eth1"])
            _ = try await sandbox.startMasqd(mode: .tcx, devices: "ext+")
            let ext1Before = try sandbox.receivedPackets(DeviceE2ETests.uplink)

            for kind in ["tcp", "udp"] {
                let port = kind == "tcp" ? Sandbox.tcpPort : Sandbox.udpPort
                let result = try await sandbox.probe(sandbox.pods[0], [kind, "--dst", "\(Sandbox.outsideIP):\(port)"])
                #expect(observedIP(result) == Sandbox.nodeIP, "\(kind): \(result)\n\(sandbox.deviceLog)")
            }
            // The replies really took ext1.
            #expect(try sandbox.receivedPackets(DeviceE2ETests.uplink) - ext1Before >= 2)
        }
    }

    @Test("a VLAN subdevice's frame passes its masquerading parent untouched, not masqueraded to the parent's address")
    func vlanFramesPassTheParent() async throws {
        try await Sandbox.with { sandbox in
            // This kernel has no 8021q module, so no VLAN device: a program ahead of masq's
            // on ext0's egress tags every packet with VLAN 100 in the skb's metadata, as the
            // kernel hands a VLAN subdevice's frame to its parent (skb->vlan_present).
            let pin = sandbox.bpffsMount + "/vlan-tagger"
            try await sandbox.sh(sandbox.netprobe(sandbox.node, ["passprog", "--pin", pin, "--vlan", "100"]))
            let tc = ["tc", "-n", sandbox.node]
            try await sandbox.sh(tc + ["qdisc", "add", "dev", Sandbox.device, "clsact"])
            try await sandbox.sh(tc + ["filter", "add", "dev", Sandbox.device, "egress", "prio", "1",
                                       "bpf", "da", "object-pinned", pin])
            // The tagger tags ARP too, which the outside host cannot answer: a permanent
            // neighbour entry lets the datagram leave.
            let shown = try await sandbox.sh(["ip", "-n", sandbox.outside, "-j", "link", "show", "dev", "eth0"])
            struct Link: Decodable { var address: String }
            let mac = try #require(try JSONDecoder().decode([Link].self, from: Data(shown.stdout.utf8)).first).address
            try await sandbox.sh(["ip", "-n", sandbox.node, "neigh", "replace", Sandbox.outsideIP, "lladdr", mac,
                                  "dev", Sandbox.device, "nud", "permanent"])
            try await sandbox.startServers()
            let sniffReady = "\(sandbox.dir)/sniff.ready"
            _ = try sandbox.spawn("sniff", sandbox.netprobe(sandbox.outside, [
                "sniff", "--dev", "eth0", "--net", Sandbox.podCIDR, "--ready", sniffReady, "--lifetime", "60",
            ]))
            try await sandbox.waitUntil("the sniffer listens", timeout: .seconds(15)) {
                FileManager.default.fileExists(atPath: sniffReady)
            }
            try await sandbox.startMasqd(mode: .tc)

            // The outside host has no VLAN 100: the datagram goes unanswered. What counts is
            // the source it left with.
            _ = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)", "--tries", "2"])
            try await sandbox.waitUntil("the sniffer sees the tagged datagram", timeout: .seconds(5)) {
                sandbox.output("sniff").contains("seen \(Sandbox.podIPs[0]) \(Sandbox.outsideIP) 17")
            }
            let entries = try await sandbox.sh(["bpftool", "-j", "map", "dump", "pinned", "\(sandbox.bpffsRoot)/masq_nat_v4"])
            #expect(entries.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]",
                    "masq tracked the VLAN frame: \(entries.stdout)")
        }
    }

    /// How the flapping uplink is chosen: named in `devices`, or by its default route (which
    /// the kernel flushes when the link goes down; here it is added back after each flap, as
    /// DHCP or networkd would, a moment after the link is up).
    enum Selection: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case named, defaultRoute
        var testDescription: String { self == .named ? "devices: ext0" : "devices empty, default route" }
    }

    @Test("30 flaps of the uplink under traffic: the outside never sees a pod address, and masquerading goes on after",
          arguments: Selection.allCases)
    func linkFlaps(selection: Selection) async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            let defaultRoute = ["ip", "-n", sandbox.node, "route", "replace", "default", "via", Sandbox.outsideIP,
                                "dev", Sandbox.device]
            if selection == .defaultRoute { try await sandbox.sh(defaultRoute) }
            let masqd = try await sandbox.startMasqd(mode: .tcx, devices: selection == .named ? Sandbox.device : "")
            let sniffReady = "\(sandbox.dir)/sniff.ready"
            _ = try sandbox.spawn("sniff", sandbox.netprobe(sandbox.outside, [
                "sniff", "--dev", "eth0", "--net", Sandbox.podCIDR, "--ready", sniffReady, "--lifetime", "120",
            ]))
            try await sandbox.waitUntil("the sniffer listens", timeout: .seconds(15)) {
                FileManager.default.fileExists(atPath: sniffReady)
            }
            let churn = try sandbox.spawn("churn", sandbox.netprobe(sandbox.pods[0], [
                "churn", "--dst", Sandbox.outsideIP, "--tcp", "\(Sandbox.tcpPort)", "--udp", "\(Sandbox.udpPort)",
                "--seconds", "25",
            ]))
            try await Task.sleep(for: .seconds(1))
            let started = ContinuousClock.now
            for _ in 0..<30 {
                try await sandbox.sh(["ip", "-n", sandbox.node, "link", "set", Sandbox.device, "down"])
                try await Task.sleep(for: .milliseconds(100))
                try await sandbox.sh(["ip", "-n", sandbox.node, "link", "set", Sandbox.device, "up"])
                try await Task.sleep(for: .milliseconds(250))
                if selection == .defaultRoute { try await sandbox.sh(defaultRoute) }
            }
            print("masq: 30 uplink flaps (\(selection.rawValue)) took \(ContinuousClock.now - started)")
            #expect(await Command.waitForExit(churn, timeout: .seconds(60)), "the churn did not end")
            let summary = sandbox.output("churn")
            print("masq: traffic during the flaps: \(summary.trimmingCharacters(in: .whitespacesAndNewlines))")
            // Let the last packets reach the sniffer.
            try await Task.sleep(for: .milliseconds(500))
            let leaks = sandbox.output("sniff").split(separator: "\n").filter { $0.hasPrefix("seen ") }
            #expect(leaks.isEmpty, "\(leaks.count) packets with a pod source reached the outside: \(leaks.prefix(10))")
            #expect(summary.contains("churn udp="), "churn: \(summary) \(sandbox.errors("churn"))")
            #expect(!sandbox.serverObservations.contains { $0.contains("10.244.1.") }, "the server saw a pod address")
            let attached = try sandbox.attachmentsSync(of: Sandbox.device)
            #expect(attached.tcxEgress.count == 1 && attached.tcxIngress.count == 1, "\(attached)")
            #expect(!sandbox.deviceLog.contains("Device no longer in force"), "\(sandbox.deviceLog)")

            let after = try await sandbox.probe(sandbox.pods[1], ["tcp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.tcpPort)"])
            #expect(observedIP(after) == Sandbox.nodeIP, "after the flaps: \(after)")
            #expect(masqd.isRunning)
        }
    }
}

// MARK: sandbox additions for these scenarios

extension Sandbox {
    /// tun0 in the node and in the outside host, joined by a relay; the outside host's
    /// 100.2.0.2 is reachable from the node through it only.
    func addTunUplink() async throws {
        let ready = "\(dir)/tunrelay.ready"
        let relay = try spawn("tunrelay", ["python3", "-u", Self.netprobe, "tunrelay",
                                           "--a", "\(node):tun0", "--b", "\(outside):tun0", "--ready", ready])
        try await waitUntil("the tun relay runs", timeout: .seconds(15)) {
            guard relay.isRunning else {
                throw CommandError(description: "the tun relay exited: \(self.output("tunrelay")) \(self.errors("tunrelay"))")
            }
            return FileManager.default.fileExists(atPath: ready)
        }
        try await sh(["ip", "-n", node, "addr", "add", "\(LinkE2ETests.tunNodeIP)/30", "dev", "tun0"])
        try await sh(["ip", "-n", node, "link", "set", "tun0", "up"])
        try await sh(["ip", "-n", outside, "addr", "add", "\(LinkE2ETests.tunPeerIP)/30", "dev", "tun0"])
        try await sh(["ip", "-n", outside, "link", "set", "tun0", "up"])
        try await sh(["ip", "-n", outside, "addr", "add", "\(LinkE2ETests.tunFarIP)/32", "dev", "lo"])
        try await sh(["ip", "-n", node, "route", "add", "100.2.0.0/24", "dev", "tun0"])
    }

    /// Packets a node device received (`ip -s -j link`).
    func receivedPackets(_ device: String) throws -> Int {
        let shown = Command.runSync(["ip", "-n", node, "-s", "-j", "link", "show", "dev", device])
        guard shown.succeeded else { throw CommandError(description: shown.description) }
        struct Link: Decodable {
            struct Stats: Decodable { struct Counters: Decodable { var packets: Int }; var rx: Counters }
            var stats64: Stats
        }
        let links = try JSONDecoder().decode([Link].self, from: Data(shown.stdout.utf8))
        guard let link = links.first else { throw CommandError(description: "no link \(device) in \(shown.stdout)") }
        return link.stats64.rx.packets
    }
}
