@preconcurrency import Glibc
import API
import CLibbpf
import CMasq
import Daemon
import Datapath
import Foundation
import TestSupport

#if canImport(Glibc)
import Testing
#endif

/// A ConfigMap-mounted ip-masq-agent file, laid out as the kubelet does it:
/// `ip-masq-agent -> ..data/ip-masq-agent`, `..data -> ..<timestamp>/`; an update writes a new
/// timestamped directory, renames a `..data_tmp` symlink over `..data` and deletes the old one.
struct ConfigMapDir {
    let dir: String
    let key = "ip-masq-agent"
    var path: String { "\(dir)/\(key)" }
    private static let counter = Counter()

    init(dir: String, initial: String) throws {
        self.dir = dir
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let first = try writeVersion(initial)
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/..data", withDestinationPath: first)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "..data/\(key)")
    }

    private func writeVersion(_ text: String) throws -> String {
        let name = "..2026_11_27_\(Self.counter.next())"
        try FileManager.default.createDirectory(atPath: "\(dir)/\(name)", withIntermediateDirectories: true)
        try text.write(toFile: "\(dir)/\(name)/\(key)", atomically: false, encoding: .utf8)
        return name
    }

    /// Swaps in a new version the way the kubelet's atomic writer does.
    func update(_ text: String) throws {
        let old = try FileManager.default.destinationOfSymbolicLink(atPath: "\(dir)/..data")
        let new = try writeVersion(text)
        try FileManager.default.createSymbolicLink(atPath: "\(dir)/..data_tmp", withDestinationPath: new)
        guard rename("\(dir)/..data_tmp", "\(dir)/..data") == 0 else {
            throw CommandError(description: "rename ..data_tmp: errno \(errno)")
        }
        try FileManager.default.removeItem(atPath: "\(dir)/\(old)")
    }

    static func yaml(_ cidrs: [String]) -> String {
        "nonMasqueradeCIDRs:\n" + cidrs.map { "  - \($0)\n" }.joined()
    }
}

/// Reads the pinned non-masquerade LPM map directly, as a packet would see it.
struct PinnedCIDRMap {
    let map: BPFMap

    init(bpffsRoot: String) throws {
        let fd = bpf_obj_get("\(bpffsRoot)/\(MASQ_MAP_NONMASQ_V4)")
        guard fd >= 0 else { throw CommandError(description: "no pinned \(MASQ_MAP_NONMASQ_V4) under \(bpffsRoot)") }
        map = BPFMap(name: MASQ_MAP_NONMASQ_V4, fd: fd, maxEntries: 0)
    }

    func close() { Glibc.close(map.fd) }

    func cidrs() throws -> Set<String> {
        Set(try map.keys(as: masq_lpm_v4.self).map { key in
            "\(IPv4Address(networkOrder: key.addr))/\(key.prefixlen)"
        })
    }
}

@Suite("ip-masq-agent end to end", .serialized)
struct IPMasqAgentE2ETests {
    static let linkLocal = "169.254.0.0/16"

    private func startAgentMasqd(_ sandbox: Sandbox, configMap: ConfigMapDir, extra: KeyValuePairs<String, String> = [:]) async throws {
        var overrides: [(String, String)] = [("--ip-masq-agent-config-path", configMap.path)]
        overrides += extra.map { ($0.0, $0.1) }
        try await sandbox.startMasqd(mode: .tcx, overrides: overrides)
    }

    /// What the outside server at the excluded address saw as the pod's TCP source.
    private func sourceSeenAtExcluded(_ sandbox: Sandbox) async throws -> String {
        let tcp = try await sandbox.probe(sandbox.pods[0], ["tcp", "--dst", "\(Sandbox.excludedIP):\(Sandbox.tcpPort)"])
        #expect(tcp.succeeded, "\(tcp)\n\(sandbox.masqdLog)")
        let answer = tcp.stdout.split(separator: "\n").last.map(String.init) ?? ""
        return String(answer.split(separator: ":").first ?? "")
    }

    @Test("a destination added by a ConfigMap symlink swap stops being masqueraded within 1 s, without a restart")
    func symlinkSwapAppliesLive() async throws {
        try await Sandbox.with { sandbox in
            let cm = try ConfigMapDir(dir: "\(sandbox.dir)/configmap", initial: ConfigMapDir.yaml(["10.0.0.0/8"]))
            try await sandbox.startServers()
            try await startAgentMasqd(sandbox, configMap: cm)
            let map = try PinnedCIDRMap(bpffsRoot: sandbox.bpffsRoot)
            defer { map.close() }
            #expect(try map.cidrs() == ["10.0.0.0/8", Self.linkLocal])
            #expect(try await sourceSeenAtExcluded(sandbox) == Sandbox.nodeIP)

            let swapped = ContinuousClock.now
            try cm.update(ConfigMapDir.yaml(["10.0.0.0/8", Sandbox.excludedCIDR]))
            try await sandbox.waitUntil("the map holds \(Sandbox.excludedCIDR)", timeout: .seconds(1)) {
                try map.cidrs().contains(Sandbox.excludedCIDR)
            }
            let latency = ContinuousClock.now - swapped
            print("ip-masq-agent reload latency (ConfigMap swap to map updated): \(latency)")
            #expect(try map.cidrs() == ["10.0.0.0/8", Sandbox.excludedCIDR, Self.linkLocal])
            #expect(try await sourceSeenAtExcluded(sandbox) == Sandbox.podIPs[0])
        }
    }

    @Test("an invalid update leaves the map and the behaviour unchanged, and the next good one applies")
    func invalidUpdateChangesNothing() async throws {
        try await Sandbox.with { sandbox in
            let good = ["10.0.0.0/8", Sandbox.excludedCIDR]
            let cm = try ConfigMapDir(dir: "\(sandbox.dir)/configmap", initial: ConfigMapDir.yaml(good))
            try await sandbox.startServers()
            try await startAgentMasqd(sandbox, configMap: cm)
            let map = try PinnedCIDRMap(bpffsRoot: sandbox.bpffsRoot)
            defer { map.close() }
            let before = try map.cidrs()

            try cm.update(ConfigMapDir.yaml(["10.0.0.0/8", "100.0.9.1/24"]))  // host bits set
            try await sandbox.waitUntil("masqd logs the rejection", timeout: .seconds(2)) {
                sandbox.masqdLog.contains("ip-masq-agent config rejected")
            }
            #expect(sandbox.masqdLog.contains("has host bits set"), "\(sandbox.masqdLog)")
            #expect(try map.cidrs() == before)
            #expect(try await sourceSeenAtExcluded(sandbox) == Sandbox.podIPs[0])

            try cm.update("nonMasqueradeCIDRs: [10.0.0.0/8\n")  // not YAML
            try await Task.sleep(for: .milliseconds(300))
            #expect(try map.cidrs() == before)

            try cm.update(ConfigMapDir.yaml(["10.0.0.0/8"]))
            try await sandbox.waitUntil("the good update applies", timeout: .seconds(1)) {
                try !map.cidrs().contains(Sandbox.excludedCIDR)
            }
            #expect(try await sourceSeenAtExcluded(sandbox) == Sandbox.nodeIP)
        }
    }

    @Test("an invalid file on a fresh start puts the defaults in force; on a restart the pinned list stays")
    func invalidAtStart() async throws {
        try await Sandbox.with { sandbox in
            let broken = "nonMasqueradeCIDRs: [8.8.8.0/24\n"
            let cm = try ConfigMapDir(dir: "\(sandbox.dir)/configmap", initial: broken)
            try await startAgentMasqd(sandbox, configMap: cm)
            let map = try PinnedCIDRMap(bpffsRoot: sandbox.bpffsRoot)
            defer { map.close() }
            let defaults = Set(IPMasqAgentConfig.defaultNonMasqueradeCIDRs.map(\.description) + [Self.linkLocal])
            #expect(try map.cidrs() == defaults, "\(sandbox.masqdLog)")
            #expect(sandbox.masqdLog.contains("ip-masq-agent config rejected"), "\(sandbox.masqdLog)")
            let status = try await sandbox.masqClient(["status"])
            #expect(status.stdout.contains("last load failed: \(cm.path)"), "\(status)")

            let good: Set = [Sandbox.excludedCIDR, Self.linkLocal]
            try cm.update(ConfigMapDir.yaml([Sandbox.excludedCIDR]))
            try await sandbox.waitUntil("the good file applies", timeout: .seconds(1)) { try map.cidrs() == good }

            // The list pinned before a restart is the last good one.
            #expect(try await sandbox.stopMasqd() == 0)
            try cm.update(broken)
            try await startAgentMasqd(sandbox, configMap: cm)
            #expect(try map.cidrs() == good, "\(sandbox.masqdLog)")
            #expect(sandbox.masqdLog.contains("pinned before the restart"), "\(sandbox.masqdLog)")
        }
    }

    @Test("deleting the file goes to the default list, and re-creating it goes back")
    func deleteAndRecreate() async throws {
        try await Sandbox.with { sandbox in
            let cm = try ConfigMapDir(dir: "\(sandbox.dir)/configmap", initial: ConfigMapDir.yaml([Sandbox.excludedCIDR]))
            try await startAgentMasqd(sandbox, configMap: cm)
            let map = try PinnedCIDRMap(bpffsRoot: sandbox.bpffsRoot)
            defer { map.close() }
            let custom: Set = [Sandbox.excludedCIDR, Self.linkLocal]
            #expect(try map.cidrs() == custom)

            let defaults = Set(IPMasqAgentConfig.defaultNonMasqueradeCIDRs.map(\.description) + [Self.linkLocal])
            try FileManager.default.removeItem(atPath: cm.path)
            try await sandbox.waitUntil("the defaults apply", timeout: .seconds(1)) { try map.cidrs() == defaults }

            try FileManager.default.createSymbolicLink(atPath: cm.path, withDestinationPath: "..data/\(cm.key)")
            try await sandbox.waitUntil("the file's list applies again", timeout: .seconds(1)) { try map.cidrs() == custom }
        }
    }

    @Test("100 swaps in a row end with the last list, and a CIDR every version lists is never missing meanwhile")
    func manySwaps() async throws {
        try await Sandbox.with { sandbox in
            let stable = "10.0.0.0/8"
            let cm = try ConfigMapDir(dir: "\(sandbox.dir)/configmap", initial: ConfigMapDir.yaml([stable, "100.1.0.0/24"]))
            try await startAgentMasqd(sandbox, configMap: cm)
            let map = try PinnedCIDRMap(bpffsRoot: sandbox.bpffsRoot)
            defer { map.close() }

            // A reader walks the map as fast as it can while the swaps run (bounded by time).
            let poller = Task.detached { () -> (reads: Int, missing: Int) in
                var reads = 0, missing = 0
                let end = ContinuousClock.now + .seconds(20)
                while !Task.isCancelled && ContinuousClock.now < end {
                    if let cidrs = try? map.cidrs() {
                        reads += 1
                        if !cidrs.contains(stable) { missing += 1 }
                    }
                }
                return (reads, missing)
            }
            for i in 1...100 {
                try cm.update(ConfigMapDir.yaml([stable, "100.1.\(i).0/24"]))
                try await Task.sleep(for: .milliseconds(5))
            }
            let last: Set = [stable, "100.1.100.0/24", Self.linkLocal]
            try await sandbox.waitUntil("the last list applies", timeout: .seconds(2)) { try map.cidrs() == last }
            poller.cancel()
            let (reads, missing) = await poller.value
            #expect(reads > 100, "the poller read the map only \(reads) times")
            #expect(missing == 0, "\(stable) was missing in \(missing) of \(reads) reads")
        }
    }

    @Test("SIGHUP re-reads the daemon config: a new cluster node stops being masqueraded without a restart")
    func sighupAppliesLiveKeys() async throws {
        try await Sandbox.with { sandbox in
            let configFile = "\(sandbox.dir)/masqd.yaml"
            try "cluster-node-ips: []\n".write(toFile: configFile, atomically: true, encoding: .utf8)
            try await sandbox.startServers()
            try await sandbox.startMasqd(mode: .tcx, overrides: ["--config": configFile, "--enable-ip-masq-agent": "false"])
            #expect(try await sourceSeenAtExcluded(sandbox) == Sandbox.nodeIP)

            try "cluster-node-ips: [\(Sandbox.excludedIP)]\nnat-max-entries: 65536\n"
                .write(toFile: configFile, atomically: true, encoding: .utf8)
            guard let masqd = sandbox.masqd else { throw CommandError(description: "masqd is not running") }
            kill(masqd.processIdentifier, SIGHUP)
            try await sandbox.waitUntil("masqd reloads its config", timeout: .seconds(2)) {
                sandbox.masqdLog.contains("Config reloaded")
            }
            #expect(sandbox.masqdLog.contains("nat-max-entries"), "the restart-only key is not reported\n\(sandbox.masqdLog)")
            #expect(try await sourceSeenAtExcluded(sandbox) == Sandbox.podIPs[0])
            #expect(masqd.isRunning)
            // The IPv4-only uplink's missing IPv6 address is told once, not again on the reload.
            let told = sandbox.errors("masqd1").split(separator: "\n").filter { $0.contains("no usable global IPv6 address") }
            #expect(told.count == 1, "\(told)")
        }
    }
}
