import API
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// IPv6 beside IPv4 in one run: masqd with both pod CIDRs in the dual-stack sandbox (see
/// `Sandbox`). No host routes back to the pods' IPv6 CIDR, so an answer reaching a pod means
/// masqd translated the flow both ways.
@Suite("dual stack end to end", .serialized)
struct DualStackE2ETests {
    static let outside6 = "[\(Sandbox.outsideIPv6)]"

    @Test("IPv6 TCP (a 128 KiB echo), UDP and ICMPv6 echo from two pods with the same source port and echo id leave with the node's address on distinct ports, beside IPv4",
          arguments: AttachScenario.allCases)
    func masqueradesBothFamilies(mode: AttachScenario) async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: mode)
            let pods = sandbox.pods

            // TCP: both pods at once, from the same port, each echoing 128 KiB.
            let tcpArgs = ["tcp", "--dst", "\(Self.outside6):\(Sandbox.tcpPort)", "--sport", "40000", "--echo", "131072"]
            async let tcp1 = sandbox.probe(pods[0], tcpArgs)
            async let tcp2 = sandbox.probe(pods[1], tcpArgs)
            let tcp = try await [tcp1, tcp2]
            for (result, podIP) in zip(tcp, Sandbox.podIPv6s) {
                #expect(result.succeeded && result.stdout.contains("echo 131072 ok"), "TCP from \(podIP): \(result)\n\(sandbox.masqdLog)")
                #expect(answerAddress(result) == Sandbox.nodeIPv6, "TCP from \(podIP): \(result)")
            }
            #expect(Set(tcp.map(answer)).count == 2, "both pods' TCP flows got the same node port: \(tcp.map(answer))")

            var udp: [CommandResult] = []
            for pod in pods {
                udp.append(try await sandbox.probe(pod, ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)", "--sport", "40001"]))
            }
            for (result, podIP) in zip(udp, Sandbox.podIPv6s) {
                #expect(result.succeeded && answerAddress(result) == Sandbox.nodeIPv6, "UDP from \(podIP): \(result)\n\(sandbox.masqdLog)")
            }
            #expect(Set(udp.map(answer)).count == 2, "both pods' UDP flows got the same node port: \(udp.map(answer))")

            for (pod, podIP) in zip(pods, Sandbox.podIPv6s) {
                let token = "echo6-\(mode)-\(pod.suffix(4))"
                let ping = try await sandbox.probe(pod, ["ping", "--dst", Sandbox.outsideIPv6, "--token", token, "--ident", "4242"])
                #expect(ping.succeeded && ping.stdout.contains("id=4242"), "ICMPv6 echo from \(podIP): \(ping)\n\(sandbox.masqdLog)")
                let sources = sandbox.serverObservations.filter { $0.hasPrefix("icmp ") && $0.hasSuffix(" " + token) }
                    .map { $0.split(separator: " ")[1] }
                #expect(!sources.isEmpty && sources.allSatisfy { $0 == Sandbox.nodeIPv6 }, "ICMPv6 sources for \(podIP): \(sources)")
            }

            // IPv4 in the same run, through the same programs.
            let udp4 = try await sandbox.probe(pods[0], ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)"])
            #expect(udp4.succeeded && answerAddress(udp4) == Sandbox.nodeIP, "UDP over IPv4: \(udp4)")

            let seen = sandbox.serverObservations
            #expect(!seen.contains { $0.contains("fd00:10:244:") || $0.contains("10.244.1.") }, "the outside saw a pod address: \(seen)")
        }
    }

    @Test("an IPv6 address added beside the node's (a /128 VIP of the same class) takes over neither while masqd runs nor after a restart: IPv6 flows keep leaving with the address in force")
    func addedAddressDoesNotTakeOver() async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)
            let udp = ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)", "--sport", "40002"]
            let before = try await sandbox.probe(sandbox.pods[0], udp)
            #expect(before.succeeded && answerAddress(before) == Sandbox.nodeIPv6, "\(before)\n\(sandbox.masqdLog)")

            // Newer than the node's address (a ULA, as the node's is): the kernel lists it first,
            // which made it the SNAT address before. (A global unicast address would take over
            // from a ULA, by design.)
            try await sandbox.sh(["ip", "-n", sandbox.node, "addr", "add", "fd00:50::9/128", "dev", Sandbox.device, "nodad"])
            // The device watcher's debounce and a reconcile: well within 2 s.
            try await Task.sleep(for: .seconds(2))
            let running = try await sandbox.probe(sandbox.pods[0], udp)
            #expect(running.succeeded && answerAddress(running) == Sandbox.nodeIPv6, "\(running)\n\(sandbox.masqdLog)")
            #expect(answer(running) == answer(before), "the flow moved: \(before) then \(running)")

            #expect(try await sandbox.stopMasqd() == 0)
            try await sandbox.startMasqd(mode: .tcx)
            let restarted = try await sandbox.probe(sandbox.pods[0], udp)
            #expect(restarted.succeeded && answerAddress(restarted) == Sandbox.nodeIPv6, "\(restarted)\n\(sandbox.masqdLog)")
            #expect(!sandbox.masqdLog.contains("Device SNAT address changed"), "\(sandbox.masqdLog)")
        }
    }

    @Test("IPv6 flows in the conntrack API: listed with family=ipv6 and an IPv6 CIDR as the outside saw them, deleted with their reply entry (the next datagram makes a new translated flow), flushed by family; /metrics counts them under family=\"ipv6\"")
    func conntrackIPv6() async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)
            let pod = sandbox.pods[0], podIP = try #require(IPAddress(Sandbox.podIPv6s[0]))
            let udp6 = ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)", "--sport", "41000"]
            let first = try await sandbox.probe(pod, udp6)
            let udp4 = try await sandbox.probe(pod, ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)", "--sport", "41000"])
            #expect(first.succeeded && udp4.succeeded, "\(first)\n\(udp4)\n\(sandbox.masqdLog)")

            func flows(_ args: [String]) async throws -> [ConntrackEntry] {
                let list = try await sandbox.masqClient(["conntrack", "list", "-o", "json"] + args)
                #expect(list.succeeded, "\(list)")
                return try list.stdout.split(separator: "\n").map { try APIJSON.decoder().decode(ConntrackEntry.self, from: Data($0.utf8)) }
            }
            func ours(_ entries: [ConntrackEntry]) -> ConntrackEntry? {
                entries.first { $0.proto == .udp && $0.original.src == podIP && $0.original.sport == 41000 }
            }
            // Listed with family=ipv6 and the pods' IPv6 CIDR: IPv6 flows only, translated as the outside saw it.
            let listed = try await flows(["--family", "ipv6", "--src", Sandbox.podCIDRv6])
            #expect(!listed.isEmpty && listed.allSatisfy { $0.family == .ipv6 }, "\(listed)")
            let flow = try #require(ours(listed), "no UDP flow from [\(podIP)]:41000 in \(listed)")
            #expect("[\(flow.translated.src)]:\(flow.translated.sport)" == answer(first), "API \(flow.translated), server saw \(answer(first))")
            #expect(flow.kind == .masquerade && flow.device == Sandbox.device && flow.replyCounters != nil)
            let table = try await sandbox.masqClient(["conntrack", "list", "--family", "ipv6"])
            #expect(table.stdout.contains("[\(podIP)]:41000") && table.stdout.contains("[\(Sandbox.outsideIPv6)]:\(Sandbox.udpPort)"), "\(table.stdout)")

            // /metrics: the IPv6 packets under family="ipv6", the IPv4 ones apart.
            let metrics = try await sandbox.metrics()
            for name in ["masq_snat_packets_total", "masq_revsnat_packets_total", "masq_nat_allocations_total"] {
                #expect((metric(metrics, name + #"{family="ipv6"}"#) ?? 0) >= 1, "\(name) ipv6:\n\(metrics)")
                #expect((metric(metrics, name + #"{family="ipv4"}"#) ?? 0) >= 1, "\(name) ipv4:\n\(metrics)")
            }

            // DELETE of the IPv6 flow takes both of its entries; the IPv4 flow of the same port stays.
            func natV6Entries() async throws -> Int {
                let dump = try await sandbox.sh(["bpftool", "-j", "map", "dump", "pinned", sandbox.bpffsRoot + "/masq_nat_v6"])
                return (try JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [Any])?.count ?? -1
            }
            let before = try await natV6Entries()
            let deleted = try await sandbox.masqClient(["conntrack", "flush", "--src", podIP.description, "--sport", "41000", "--proto", "udp", "-o", "json"])
            #expect(deleted.stdout.contains(#""deleted":1"#), "\(deleted)")
            #expect(try await natV6Entries() == before - 2)
            #expect(ours(try await flows(["--family", "ipv6"])) == nil)
            #expect(try await flows(["--family", "ipv4", "--sport", "41000"]).count == 1)

            // The next datagram makes a new translated flow, which the outside host sees.
            let deletedAt = Date()
            let again = try await sandbox.probe(pod, udp6)
            #expect(again.succeeded && answerAddress(again) == Sandbox.nodeIPv6, "\(again)\n\(sandbox.masqdLog)")
            #expect(sandbox.serverObservations.contains("udp " + answer(again)), "\(sandbox.serverObservations)")
            let renewed = try #require(ours(try await flows(["--family", "ipv6", "--dst", Sandbox.outsideIPv6])))
            #expect(renewed.ageSeconds <= Date().timeIntervalSince(deletedAt) + 1, "\(renewed)")
            #expect("[\(renewed.translated.src)]:\(renewed.translated.sport)" == answer(again))

            // Flush by family: no IPv6 flow is left, the IPv4 ones are.
            let flush = try await sandbox.masqClient(["conntrack", "flush", "--family", "ipv6", "-o", "json"])
            #expect(flush.succeeded && !flush.stdout.contains(#""deleted":0"#), "\(flush)")
            #expect(try await flows(["--family", "ipv6"]).isEmpty)
            #expect(try await natV6Entries() == 0)
            #expect(!(try await flows(["--family", "ipv4"])).isEmpty)
        }
    }

    @Test("a packet too big from a 1280-MTU link reaches the pod translated: its route cache learns mtu 1280, and the datagram then arrives in fragments")
    func packetTooBig() async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startMasqd(mode: .tcx)
            try await sandbox.withFarNetwork(mtu: 1280) {
                try await sandbox.startServer("farserver", in: sandbox.far, binds: [Sandbox.farIPv6])
                let pod = sandbox.pods[0]
                let routeGet = ["ip", "-n", pod, "-6", "route", "get", Sandbox.farIPv6]
                #expect(try await !sandbox.sh(routeGet).stdout.contains("mtu 1280"), "the pod knew the path MTU before any packet")

                // The first 1400-byte datagram is refused by the outside host's 1280-MTU link;
                // its packet too big goes to the node's address and must reach the pod
                // translated. The pod then fragments, and a retry arrives.
                let udp = try await sandbox.probe(pod, ["udp", "--dst", "[\(Sandbox.farIPv6)]:\(Sandbox.udpPort)", "--size", "1400"])
                let route = try await sandbox.sh(routeGet).stdout
                #expect(route.contains("mtu 1280"), "the pod's route cache did not learn the MTU: \(route)\n\(sandbox.masqdLog)")
                #expect(udp.succeeded && answerAddress(udp) == Sandbox.nodeIPv6, "the fragmented datagram: \(udp)\n\(sandbox.masqdLog)")
                // The datapath counted it as an IPv6 error it translated.
                let status = try await sandbox.masqClient(["status", "-o", "json"])
                let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
                let v6 = (json?["countersByFamily"] as? [String: Any])?["ipv6"] as? [String: Any]
                #expect((v6?["icmpErrorsTranslated"] as? Int ?? 0) >= 1, "no IPv6 ICMP error counted: \(status)")
            }
        }
    }

    @Test("a pod's own port unreachable about a masqueraded flow's late answer leaves translated, outer and quoted packet: the outside socket reads it as refused",
          arguments: [IPFamily.ipv4, .ipv6])
    func podErrorEgress(family: IPFamily) async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startMasqd(mode: .tcx)
            let v6 = family == .ipv6
            let outside = v6 ? Sandbox.outsideIPv6 : Sandbox.outsideIP
            let port = 8090
            let ready = "\(sandbox.dir)/late.ready"
            // Answers 4 s late on a socket connected to the node's address and port: 3 s after
            // the pod gave up, time enough for it to close its socket on a loaded machine.
            let replier = try sandbox.spawn("late", sandbox.netprobe(sandbox.outside, [
                "latereply", "--bind", outside, "--port", "\(port)", "--delay", "4", "--ready", ready,
            ]))
            try await sandbox.waitUntil("the late replier listens", timeout: .seconds(15)) {
                FileManager.default.fileExists(atPath: ready)
            }
            // The pod waits 1 s for an answer and closes its socket, so the late answer finds
            // its port closed and the pod's kernel sends a port unreachable about it.
            let dst = v6 ? "[\(outside)]:\(port)" : "\(outside):\(port)"
            let probe = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", dst, "--tries", "1"])
            #expect(!probe.succeeded, "the answer came in time: \(probe)")
            try await sandbox.waitUntil("the late replier is done", timeout: .seconds(20)) { !replier.isRunning }
            let seen = sandbox.output("late")
            let node = v6 ? "[\(Sandbox.nodeIPv6)]" : Sandbox.nodeIP
            #expect(seen.contains("from \(node):"), "the datagram came from: \(seen)")
            #expect(seen.contains("refused"), "the outside socket got no error for its answer: \(seen)\n\(sandbox.masqdLog)")
            let status = try await sandbox.masqClient(["status", "-o", "json"])
            let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
            let counters = (json?["countersByFamily"] as? [String: Any])?[family.rawValue] as? [String: Any]
            #expect((counters?["icmpErrorsTranslated"] as? Int ?? 0) >= 1, "no \(family.rawValue) ICMP error counted: \(status)")
        }
    }

    @Test("neighbour discovery and link-local traffic pass untouched (explain says so); the ip-masq-agent defaults list fe80::/10")
    func linkLocal() async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startServers()
            // No ip-masq-agent file: the default list.
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--ip-masq-agent-config-path": "\(sandbox.dir)/absent/ip-masq-agent"])

            let list = try await sandbox.masqClient(["ipmasq", "list", "-o", "json"])
            let cidrs = (try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [String: Any])?["cidrs"] as? [String] ?? []
            #expect(cidrs.contains("fe80::/10") && cidrs.contains("169.254.0.0/16") && cidrs.contains("10.0.0.0/8"), "\(list)")

            // The node reaches the outside host's link-local address through ext0 (neighbour
            // discovery both ways through the programs), and it arrives from the node's own
            // link-local address.
            let outsideLL = try await linkLocalAddress(sandbox, sandbox.outside, "eth0")
            let nodeLL = try await linkLocalAddress(sandbox, sandbox.node, Sandbox.device)
            let ping = try await sandbox.probe(sandbox.node, ["ping", "--dst", "\(outsideLL)%\(Sandbox.device)", "--token", "ll"])
            #expect(ping.succeeded, "link-local echo: \(ping)\n\(sandbox.masqdLog)")
            let sources = sandbox.serverObservations.filter { $0.hasSuffix(" ll") }.map { $0.split(separator: " ")[1] }
            #expect(!sources.isEmpty && sources.allSatisfy { $0.split(separator: "%")[0] == nodeLL }, "link-local echo sources: \(sources)")

            let explain = try await sandbox.masqClient(["explain", "--src", Sandbox.podIPv6s[0], "--dst", "fe80::1",
                                                        "--proto", "udp", "--dport", "53", "--device", Sandbox.device, "-o", "json"])
            #expect(explain.stdout.contains(#""rule":"link-scoped""#), "\(explain)")
        }
    }

    @Test("enable-ipv4-masquerade: false leaves IPv6 masqueraded, and the reverse, switched live by SIGHUP")
    func familySwitches() async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            let configFile = "\(sandbox.dir)/masqd.yaml"
            try "enable-ipv4-masquerade: false\n".write(toFile: configFile, atomically: true, encoding: .utf8)
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--config": configFile])
            let pod = sandbox.pods[0]

            let v6 = try await sandbox.probe(pod, ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)", "--sport", "43000"])
            #expect(v6.succeeded && answerAddress(v6) == Sandbox.nodeIPv6, "IPv6 with IPv4 masquerading off: \(v6)\n\(sandbox.masqdLog)")
            _ = try await sandbox.probe(pod, ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)", "--sport", "43001", "--tries", "1"])
            #expect(sandbox.serverObservations.contains("udp \(Sandbox.podIPs[0]):43001"), "IPv4 left masqueraded: \(sandbox.serverObservations)")
            let before = try await sandbox.masqClient(["status"])
            #expect(before.stdout.contains("[IPv4: Disabled, IPv6: Enabled]"), "\(before)")

            try "enable-ipv6-masquerade: false\n".write(toFile: configFile, atomically: true, encoding: .utf8)
            guard let masqd = sandbox.masqd else { throw CommandError(description: "masqd is not running") }
            kill(masqd.processIdentifier, SIGHUP)
            try await sandbox.waitUntil("masqd reloads its config", timeout: .seconds(5)) { sandbox.masqdLog.contains("Config reloaded") }
            #expect(!sandbox.masqdLog.contains("apply only after a restart"), "a family switch needs no restart\n\(sandbox.masqdLog)")

            let v4 = try await sandbox.probe(pod, ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)", "--sport", "43002"])
            #expect(v4.succeeded && answerAddress(v4) == Sandbox.nodeIP, "IPv4 after the switch: \(v4)\n\(sandbox.masqdLog)")
            _ = try await sandbox.probe(pod, ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)", "--sport", "43003", "--tries", "1"])
            #expect(sandbox.serverObservations.contains("udp [\(Sandbox.podIPv6s[0])]:43003"), "IPv6 left masqueraded: \(sandbox.serverObservations)")
            let after = try await sandbox.masqClient(["status"])
            #expect(after.stdout.contains("[IPv4: Enabled, IPv6: Disabled]"), "\(after)")
        }
    }

    @Test("new IPv6 flows follow the uplink's address live: a newer address does not take over, a deprecated one is left for the next; none left, IPv4 only")
    func addressChange() async throws {
        try await Sandbox.with(dualStack: true) { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)
            let pod = sandbox.pods[0]
            var sport = 44000
            /// Sends new IPv6 UDP flows until one leaves with `expected`.
            func waitForSource(_ expected: String, _ what: String) async throws {
                var seen: [String] = []
                let deadline = ContinuousClock.now + .seconds(10)
                while ContinuousClock.now < deadline {
                    sport += 1
                    let result = try await sandbox.probe(pod, ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)",
                                                               "--sport", String(sport), "--tries", "1"])
                    if answerAddress(result) == expected { return }
                    seen.append(answerAddress(result))
                }
                throw CommandError(description: "\(what): no new flow left with \(expected); seen \(seen)\n\(sandbox.masqdLog)")
            }
            try await waitForSource(Sandbox.nodeIPv6, "at start")

            // A newer address beside it: the address in force stays (flows are not moved).
            let newer = "fd00:50::5"
            try await sandbox.sh(["ip", "-n", sandbox.node, "addr", "add", "\(newer)/64", "dev", Sandbox.device, "nodad"])
            try await Task.sleep(for: .seconds(2))
            try await waitForSource(Sandbox.nodeIPv6, "a newer address added")

            // Deprecated (preferred lifetime 0): never a SNAT address for new flows.
            try await sandbox.sh(["ip", "-n", sandbox.node, "addr", "change", "\(Sandbox.nodeIPv6)/64", "dev", Sandbox.device,
                                  "preferred_lft", "0", "nodad"])
            try await waitForSource(newer, "the address in force deprecated")

            // Only deprecated addresses left: the device masquerades IPv4 only, and says why.
            try await sandbox.sh(["ip", "-n", sandbox.node, "addr", "change", "\(newer)/64", "dev", Sandbox.device,
                                  "preferred_lft", "0", "nodad"])
            let missing = "\(Sandbox.device) masquerades no IPv6: no usable global IPv6 address"
            var status = try await sandbox.masqClient(["status"])
            for _ in 0..<50 where !status.stdout.contains(missing) {
                try await Task.sleep(for: .milliseconds(100))
                status = try await sandbox.masqClient(["status"])
            }
            #expect(status.stdout.contains(missing), "\(status)")
            let v4 = try await sandbox.probe(pod, ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)"])
            #expect(v4.succeeded && answerAddress(v4) == Sandbox.nodeIP, "IPv4 without an IPv6 address: \(v4)")
            _ = try await sandbox.probe(pod, ["udp", "--dst", "\(Self.outside6):\(Sandbox.udpPort)", "--sport", "44999", "--tries", "1"])
            #expect(!sandbox.serverObservations.contains { $0.contains("fd00:10:244:") }, "a pod address left the node: \(sandbox.serverObservations)")
            #expect(sandbox.masqdLog.contains("no usable global IPv6 address"), "\(sandbox.masqdLog)")
        }
    }
}

/// The server's answer: the first line a probe printed ("ip:port", IPv6 "[ip]:port").
private func answer(_ result: CommandResult) -> String {
    result.stdout.split(separator: "\n").first.map(String.init) ?? ""
}

/// The address part of the server's answer, either family.
func answerAddress(_ result: CommandResult) -> String {
    let text = answer(result)
    if text.hasPrefix("["), let end = text.firstIndex(of: "]") { return String(text[text.index(after: text.startIndex)..<end]) }
    return String(text.split(separator: ":").first ?? "")
}

/// The link-local address of `device` in namespace `ns`.
private func linkLocalAddress(_ sandbox: Sandbox, _ ns: String, _ device: String) async throws -> String {
    let out = try await sandbox.sh(["ip", "-n", ns, "-6", "-o", "addr", "show", "dev", device, "scope", "link"]).stdout
    guard let field = out.split(separator: " ").first(where: { $0.hasPrefix("fe80:") }) else {
        throw CommandError(description: "no link-local address on \(device) in \(ns): \(out)")
    }
    return String(field.split(separator: "/")[0])
}
