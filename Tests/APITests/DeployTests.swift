import API
import CMasq
@testable import Daemon
import Foundation
import Testing
import Yams

extension LiveAPITests {
/// deploy/kubernetes/masqd.yaml against what masqd really costs.
@Suite("deploy manifests", .serialized)
struct DeployTests {
    /// A Kubernetes memory quantity (`256Mi`, `1Gi`, `300M`, bytes) in bytes.
    static func bytes(_ quantity: String) -> Int? {
        let units: [(String, Int)] = [("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000)]
        for (suffix, factor) in units where quantity.hasSuffix(suffix) {
            return Int(quantity.dropLast(suffix.count)).map { $0 * factor }
        }
        return Int(quantity)
    }

    /// The memlock the kernel charges for the map behind `fd` (its memory cgroup is charged as much).
    static func memlock(fd: Int32) throws -> Int {
        let info = try String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8)
        let line = try #require(info.split(separator: "\n").first { $0.hasPrefix("memlock:") })
        return try #require(Int(line.dropFirst("memlock:".count).trimmingCharacters(in: .whitespaces)))
    }

    @Test("the DaemonSet's memory request covers the NAT tables at the default nat-max-entries, which its memory cgroup is charged")
    func memoryCoversNATTables() async throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("deploy/kubernetes/masqd.yaml").path
        let documents = try Yams.load_all(yaml: String(contentsOfFile: path, encoding: .utf8)).compactMap { $0 as? [String: Any] }
        let daemonSet = try #require(documents.first { $0["kind"] as? String == "DaemonSet" })
        let containers = try #require(((daemonSet["spec"] as? [String: Any])?["template"] as? [String: Any])
            .flatMap { ($0["spec"] as? [String: Any])?["containers"] as? [[String: Any]] })
        let resources = try #require(containers.first { $0["name"] as? String == "masqd" }?["resources"] as? [String: Any])
        let request = try #require((resources["requests"] as? [String: Any])?["memory"] as? String).flatMap(Self.bytes)
        let limit = try #require((resources["limits"] as? [String: Any])?["memory"] as? String).flatMap(Self.bytes)

        try await LiveAPI.with { api in
            // Preallocated: the charge grows with max_entries alone, so this datapath's tables
            // give the per-entry cost.
            var perEntry = 0.0
            for name in [MASQ_MAP_NAT_V4, MASQ_MAP_NAT_V6] {
                let map = try await api.datapath.map(name)
                perEntry += Double(try Self.memlock(fd: map.fd)) / Double(map.maxEntries)
            }
            let tables = perEntry * Double(DaemonConfig().natMaxEntries)
            // What README and the manifest allow beside them: other maps and the process.
            let rest = 48.0 * 1024 * 1024
            let needed = tables + rest
            #expect(Double(try #require(request)) >= needed,
                    "request \(request ?? 0) B < \(Int(needed)) B (NAT tables \(Int(tables)) B at \(perEntry) B an entry)")
            // A fresh masqd's charge peaked 64 MiB over its steady figure while it started.
            #expect(Double(try #require(limit)) >= needed + 64 * 1024 * 1024, "limit \(limit ?? 0) B leaves no room over \(Int(needed)) B")
        }
    }
}
}
