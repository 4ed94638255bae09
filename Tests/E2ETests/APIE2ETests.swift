import API
import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
@preconcurrency import Glibc
#endif

/// The control API and masq-client against masqd with real traffic, in the sandbox of
/// `Sandbox` (pods behind the node's ext0, an outside host; 100.0.9.0/24 non-masquerade).
@Suite("control API end to end", .serialized)
struct APIE2ETests {
    @Test("the conntrack dump shows each flow with its translation, and a filtered DELETE removes exactly the matching ones")
    func conntrackDumpAndFilteredDelete() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)
            let server = Sandbox.outsideIP
            let udp1 = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", "41000"])
            let udp2 = try await sandbox.probe(sandbox.pods[1], ["udp", "--dst", "\(server):\(Sandbox.udpPort)", "--sport", "41001"])
            let tcp1 = try await sandbox.probe(sandbox.pods[0], ["tcp", "--dst", "\(server):\(Sandbox.tcpPort)", "--sport", "42000"])
            #expect(udp1.succeeded && udp2.succeeded && tcp1.succeeded, "\(udp1)\n\(udp2)\n\(tcp1)\n\(sandbox.masqdLog)")

            let flows = try await sandbox.conntrack()
            for (probe, pod, sport, proto) in [(udp1, Sandbox.podIPs[0], 41000, "udp"), (udp2, Sandbox.podIPs[1], 41001, "udp"),
                                               (tcp1, Sandbox.podIPs[0], 42000, "tcp")] {
                let flow = flows.first { $0.proto == proto && $0.originalSrc == "\(pod):\(sport)" }
                #expect(flow != nil, "no \(proto) flow from \(pod):\(sport) in \(flows)")
                // What the outside server saw is exactly the translated source the API reports.
                let seen = probe.stdout.split(separator: "\n").last.map(String.init) ?? ""
                #expect(flow?.translatedSrc == seen, "\(proto) from \(pod): API says \(flow?.translatedSrc ?? "-"), server saw \(seen)")
                #expect(flow?.kind == "masquerade" && flow?.device == Sandbox.device)
                #expect(flow?.originalDst == flow?.translatedDst)
            }

            let flush = try await sandbox.masqClient(["conntrack", "flush", "--src", Sandbox.podIPs[0], "--proto", "udp", "-o", "json"])
            #expect(flush.succeeded, "\(flush)")
            #expect(flush.stdout.contains(#""deleted":1"#), "\(flush)")
            let after = try await sandbox.conntrack()
            #expect(!after.contains { $0.originalSrc == "\(Sandbox.podIPs[0]):41000" })
            #expect(after.contains { $0.originalSrc == "\(Sandbox.podIPs[1]):41001" })
            #expect(after.contains { $0.originalSrc == "\(Sandbox.podIPs[0]):42000" })
        }
    }

    @Test("/v1/ipmasq equals the non-masquerade map's contents, and explain agrees with what the outside server observes")
    func ipmasqAndExplain() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx)

            let api = try await sandbox.masqClient(["ipmasq", "list", "-o", "json"])
            let cidrs = (try JSONSerialization.jsonObject(with: Data(api.stdout.utf8)) as? [String: Any])?["cidrs"] as? [String]
            let dump = try await sandbox.sh(["bpftool", "-j", "map", "dump", "pinned", sandbox.bpffsRoot + "/masq_nonmasq_v4"])
            let dump6 = try await sandbox.sh(["bpftool", "-j", "map", "dump", "pinned", sandbox.bpffsRoot + "/masq_nonmasq_v6"])
            #expect(Set(cidrs ?? []) == Set(lpmKeys(bpftoolJSON: dump.stdout) + lpmKeys(bpftoolJSON: dump6.stdout)),
                    "API: \(api.stdout) maps: \(dump.stdout) \(dump6.stdout)")
            // The sandbox's ip-masq-agent file lists the excluded CIDR; link-local is added for
            // both families (masqLinkLocal and masqLinkLocalIPv6 off).
            #expect(cidrs == [Sandbox.excludedCIDR, "169.254.0.0/16", "fe80::/10"])

            let pod = sandbox.pods[0], podIP = Sandbox.podIPs[0]
            for (destination, masqueraded) in [(Sandbox.outsideIP, true), (Sandbox.excludedIP, false)] {
                let explain = try await sandbox.masqClient(["explain", "--src", podIP, "--dst", destination,
                                                            "--proto", "tcp", "--dport", String(Sandbox.tcpPort), "-o", "json"])
                let answer = try JSONSerialization.jsonObject(with: Data(explain.stdout.utf8)) as? [String: Any]
                #expect(answer?["masquerade"] as? Bool == masqueraded, "\(explain)")
                #expect(answer?["device"] as? String == Sandbox.device)
                let tcp = try await sandbox.probe(pod, ["tcp", "--dst", "\(destination):\(Sandbox.tcpPort)"])
                let seen = String((tcp.stdout.split(separator: "\n").last ?? "").split(separator: ":").first ?? "")
                if masqueraded {
                    #expect(answer?["snatAddress"] as? String == seen && seen == Sandbox.nodeIP, "explain \(explain.stdout), seen \(seen)")
                } else {
                    #expect(answer?["rule"] as? String == "non-masquerade-cidr" && answer?["cidr"] as? String == Sandbox.excludedCIDR)
                    #expect(seen == podIP, "explain \(explain.stdout), seen \(seen)")
                }
            }
        }
    }

    @Test("explain routes a pod's packet as the node forwards it: a rule on the pod's source sends it out another device, which does not masquerade")
    func explainFollowsSourceRules() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startMasqd(mode: .tcx)
            // A second uplink the pods of one source are routed through (as multi-NIC and ENI
            // setups do), not a masquerading device.
            let ip = ["ip", "-n", sandbox.node]
            try await sandbox.sh(ip + ["link", "add", "side0", "type", "veth", "peer", "name", "side1"])
            try await sandbox.sh(ip + ["addr", "add", "192.0.2.1/24", "dev", "side0"])
            try await sandbox.sh(ip + ["link", "set", "side0", "up"])
            try await sandbox.sh(ip + ["link", "set", "side1", "up"])
            try await sandbox.sh(ip + ["route", "add", "default", "via", "192.0.2.2", "dev", "side0", "table", "100"])
            try await sandbox.sh(ip + ["rule", "add", "from", Sandbox.podIPs[0], "lookup", "100", "pref", "100"])
            for (podIP, device, masqueraded) in [(Sandbox.podIPs[0], "side0", false), (Sandbox.podIPs[1], Sandbox.device, true)] {
                let explain = try await sandbox.masqClient(["explain", "--src", podIP, "--dst", Sandbox.outsideIP,
                                                            "--proto", "tcp", "--dport", String(Sandbox.tcpPort), "-o", "json"])
                let answer = try JSONSerialization.jsonObject(with: Data(explain.stdout.utf8)) as? [String: Any]
                #expect(answer?["device"] as? String == device && answer?["masquerade"] as? Bool == masqueraded, "\(podIP): \(explain)")
            }
        }
    }

    @Test("a peer that is not root gets 200 on GET and 403 on DELETE")
    func nonRootPeer() async throws {
        try await Sandbox.with { sandbox in
            try await sandbox.startServers()
            try await sandbox.startMasqdWithSocketGroup("nogroup")
            _ = try await sandbox.probe(sandbox.pods[0], ["udp", "--dst", "\(Sandbox.outsideIP):\(Sandbox.udpPort)"])
            let nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            let list = try await sandbox.masqClient(["conntrack", "list", "-o", "json"], prefix: nobody)
            #expect(list.succeeded && list.stdout.contains(#""kind":"masquerade""#), "\(list)")
            let flush = try await sandbox.masqClient(["conntrack", "flush", "--all"], prefix: nobody)
            #expect(flush.status == 1 && flush.stderr.contains("(HTTP 403)"), "\(flush)")
            #expect(!(try await sandbox.conntrack()).isEmpty, "the refused DELETE removed flows")
        }
    }
}

/// One flow of `masq-client conntrack list -o json`, the fields these tests look at.
struct APIFlow: CustomStringConvertible {
    var proto: String
    var kind: String
    var originalSrc: String
    var originalDst: String
    var translatedSrc: String
    var translatedDst: String
    var device: String?

    init?(_ json: [String: Any]) {
        func endpoint(_ tuple: Any?, _ addr: String, _ port: String) -> String? {
            guard let t = tuple as? [String: Any], let a = t[addr] as? String, let p = t[port] as? Int else { return nil }
            return "\(a):\(p)"
        }
        guard let proto = json["protocol"] as? String, let kind = json["kind"] as? String,
              let os = endpoint(json["original"], "src", "sport"), let od = endpoint(json["original"], "dst", "dport"),
              let ts = endpoint(json["translated"], "src", "sport"), let td = endpoint(json["translated"], "dst", "dport")
        else { return nil }
        self.proto = proto
        self.kind = kind
        originalSrc = os
        originalDst = od
        translatedSrc = ts
        translatedDst = td
        device = json["device"] as? String
    }

    var description: String { "\(proto) \(originalSrc)->\(originalDst) as \(translatedSrc)" }
}

extension Sandbox {
    /// Starts masqd (tcx) with `--socket-group` and waits for its "masqd ready" line.
    func startMasqdWithSocketGroup(_ group: String) async throws {
        let name = "masqd-socketgroup"
        let process = try spawn(name, nsenter(node, [try Self.masqdBinary(), "run"]
            + masqdArgs(mode: .tcx) + ["--socket-group", group]))
        try await waitUntil("masqd logs 'masqd ready'", timeout: .seconds(60)) {
            if errors(name).contains("masqd ready") { return true }
            guard process.isRunning else {
                throw CommandError(description: "masqd exited before ready:\n\(errors(name))")
            }
            return false
        }
    }

    /// The masq-client built beside masqd.
    static func clientBinary() throws -> String {
        let masqd = try masqdBinary()
        return URL(fileURLWithPath: masqd).deletingLastPathComponent().appendingPathComponent("masq-client").path
    }

    /// Runs masq-client against this sandbox's masqd (`prefix`: e.g. setpriv to drop root).
    func masqClient(_ args: [String], prefix: [String] = []) async throws -> CommandResult {
        try await Command.run(prefix + [try Self.clientBinary()] + args + ["--socket", socketPath], timeout: .seconds(30))
    }

    /// The flows the API lists now.
    func conntrack() async throws -> [APIFlow] {
        let result = try await masqClient(["conntrack", "list", "-o", "json"])
        guard result.succeeded else { throw CommandError(description: "conntrack list: \(result)") }
        return result.stdout.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]).flatMap(APIFlow.init)
        }
    }
}

/// CIDRs from `bpftool -j map dump` of an LPM map with masq_lpm_v4 or masq_lpm_v6 keys
/// (prefixlen, address).
func lpmKeys(bpftoolJSON: String) -> [String] {
    guard let entries = try? JSONSerialization.jsonObject(with: Data(bpftoolJSON.utf8)) as? [[String: Any]] else { return [] }
    return entries.compactMap { entry in
        guard let key = entry["key"] as? [String] else { return nil }
        let bytes = key.compactMap { UInt8($0.dropFirst(2), radix: 16) }
        guard bytes.count == 8 || bytes.count == 20 else { return nil }
        let length = Int(bytes[0]) | Int(bytes[1]) << 8
        let address = bytes.count == 8 ? "\(IPv4Address(bytes[4], bytes[5], bytes[6], bytes[7]))" : "\(IPv6Address(bytes: Array(bytes[4...])))"
        return "\(address)/\(length)"
    }
}
