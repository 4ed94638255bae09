// The reconciler resyncs against the maps: an entry deleted behind masqd's back comes back
// within the resync period. Loads the daemon's Datapath with pins under a private bpffs root;
// no device is attached.

@preconcurrency import Glibc
import CMasq
import Logging
import Netlink
import NetworkTypes
import Testing
@testable import Daemon
@testable import Datapath

@Suite("Reconciler resync", .serialized)
struct ReconcilerResyncTests {
    private let logger = Logger(label: "reconciler-resync-test")

    @Test("retries back off from 1 s, doubling, up to the resync interval")
    func backoff() {
        #expect(ReconcilerService.backoff(1, cap: .seconds(30)) == .seconds(1))
        #expect(ReconcilerService.backoff(3, cap: .seconds(30)) == .seconds(4))
        #expect(ReconcilerService.backoff(6, cap: .seconds(30)) == .seconds(30))
        #expect(ReconcilerService.backoff(200, cap: .seconds(30)) == .seconds(30))
    }

    @Test("a node IP deleted from masq_nodes_v4 behind masqd's back is restored by the next resync",
          .timeLimit(.minutes(5)))
    func driftHeals() async throws {
        let root = "/sys/fs/bpf/masq-test-\(getpid())-resync"
        try? Datapath.uninstall(root: root, logger: logger)
        defer { try? Datapath.uninstall(root: root, logger: logger) }
        let config = try DaemonConfig(file: [:], flags: [
            .podCIDRs: .scalar("10.244.1.0/24"), .clusterNodeIPs: .scalar("192.0.2.10,192.0.2.11"),
            .bpffsRoot: .scalar(root), .devices: .scalar("none0"),
        ])
        let datapath = try Datapath(config: config, logger: logger)
        let status = DaemonStatus()
        let inputs = ReconcileInputs(config: config, network: NetworkSnapshot(links: [], defaultRouteDevices: []),
                                     nonMasquerade: NonMasqueradeList(cidrs: []))
        let (changes, sink) = AsyncStream.makeStream(of: ReconcileInputs.Change.self)
        defer { sink.finish() }
        let service = ReconcilerService(datapath: datapath, status: status, initial: inputs, changes: changes,
                                        resyncInterval: .milliseconds(200), logger: logger)
        let running = Task { try await service.run() }
        defer { running.cancel() }
        while !status.snapshot.ready { try await Task.sleep(for: .milliseconds(20)) }

        let nodes = try await datapath.map(MASQ_MAP_NODES_V4)
        let deleted = try #require(IPv4Address("192.0.2.11")).networkOrder
        #expect(try nodes.lookup(deleted, as: UInt8.self) != nil)
        let applies = status.snapshot.applyCount
        #expect(try nodes.delete(deleted))
        // Restored by a resync (every 200 ms here); the time limit bounds the wait.
        while try nodes.lookup(deleted, as: UInt8.self) == nil {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(status.snapshot.applyCount == applies + 1)
        #expect(status.snapshot.lastApplyError == nil)
        // With the maps back in step, resyncs read them and apply nothing.
        try await Task.sleep(for: .seconds(1))
        #expect(status.snapshot.applyCount == applies + 1)

        // A SIGHUP reload is settled (systemd's READY=1) only once its config is applied.
        var reloaded = config
        reloaded.clusterNodeIPs = [try #require(IPAddress("192.0.2.12"))]
        sink.yield(.config(reloaded, reload: 4))
        while status.snapshot.daemonReloadsSettled < 4 {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(status.snapshot.applyCount == applies + 2)
        #expect(status.snapshot.applied?.nodeIPsV4.count == 1)
        #expect(try nodes.lookup(try #require(IPv4Address("192.0.2.12")).networkOrder, as: UInt8.self) != nil)
        running.cancel()
        _ = await running.result
    }
}
