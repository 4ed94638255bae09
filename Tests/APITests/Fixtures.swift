@preconcurrency import Glibc
import API
import CMasq
@testable import ControlServer
@testable import Daemon
@testable import Datapath
import Netlink
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

import Synchronization
import TestSupport
import Testing

/// Whether this process may load BPF objects and mount a bpffs (the server tests need both).
let isRoot = getuid() == 0

/// A real datapath (loaded, never attached: no device is configured) under a private bpffs,
/// and the API server in this process on a socket of its own. `with` tears all of it down.
final class LiveAPI: @unchecked Sendable {
    static let podCIDR = "10.244.1.0/24"
    static let nonMasquerade = ["100.0.9.0/24", "192.168.0.0/16"]
    /// The fake masquerading device: `lo`'s ifindex in the map only (nothing is attached).
    static let snatAddress = "100.0.0.1"

    let dir: String
    let socketPath: String
    let datapath: Datapath
    let status: DaemonStatus
    let config: DaemonConfig
    private var server: Task<Void, Error>?
    private var metricsServer: Task<Void, Error>?
    /// "HOST:PORT" of the metrics listener, when one was asked for.
    private(set) var metricsAddress: String?

    private static let counter = Mutex(0)

    private init(dir: String, datapath: Datapath, status: DaemonStatus, config: DaemonConfig) {
        self.dir = dir
        self.socketPath = dir + "/masqd.sock"
        self.datapath = datapath
        self.status = status
        self.config = config
    }

    /// Runs `body` against a live server; `limits` tunes the server (abuse tests).
    /// With `metrics`, a metrics listener (`prometheus-serve-addr`) runs too; its bound
    /// address is `metricsAddress`.
    /// `attached: false` starts with the datapath not attached yet (status not ready): the
    /// server then holds requests until the test marks it ready.
    static func with<T>(limits: APIServer.Limits = .init(), socketGroup: String? = nil, metrics: ServeAddress? = nil,
                        attached: Bool = true, _ body: (LiveAPI) async throws -> T) async throws -> T {
        let n = counter.withLock { $0 += 1; return $0 }
        let dir = "/tmp/masqapi-\(getpid())-\(n)"
        let bpffs = dir + "/bpffs"
        try FileManager.default.createDirectory(atPath: bpffs, withIntermediateDirectories: true)
        guard mount("bpf", bpffs, "bpf", 0, nil) == 0 else {
            try? FileManager.default.removeItem(atPath: dir)
            throw TestFailure("mount bpffs at \(bpffs): \(String(cString: strerror(errno)))")
        }
        defer {
            umount2(bpffs, Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: dir)
        }
        var config = try DaemonConfig(file: [:], flags: [
            .podCIDRs: .scalar(podCIDR), .enableIPMasqAgent: .scalar("true"),
            .clusterNodeIPs: .scalar("192.0.2.10"), .bpffsRoot: .scalar(bpffs), .devices: .scalar("none0"),
            .natMaxEntries: .scalar("262144"),
        ])
        config.socketPath = dir + "/masqd.sock"
        config.socketGroup = socketGroup
        var logger = Logger(label: "apitests")
        logger.logLevel = .warning
        let datapath = try Datapath(config: config, logger: logger)
        let status = DaemonStatus()
        // No links: no device is selected, nothing is attached; the config maps are written.
        let state = DesiredState(ReconcileInputs(
            config: config, network: NetworkSnapshot(links: [], defaultRouteDevices: []),
            nonMasquerade: NonMasqueradeList(cidrs: try nonMasquerade.map { try IPPrefix($0) })))
        try await datapath.apply(state)
        // A masquerading device in the map only, so explain has one (never attached; apply is
        // not called again, so nothing ever touches lo).
        var device = masq_device()
        device.snat_v4 = IPv4Address(snatAddress)!.networkOrder
        device.flags = UInt32(MASQ_DEV_HAS_V4)
        try await datapath.map(MASQ_MAP_DEVICES).update(UInt32(1), device)
        let mode = datapath.mode
        // Status says that device is in force, as the reconciler would after attaching it.
        var inForce = state
        inForce.devices = [.init(name: "lo", ifindex: 1, snatV4: IPv4Address(snatAddress), snatV6: nil)]
        status.update { $0.ready = attached; $0.applied = inForce; $0.applyCount = 1; $0.attachKind = mode }

        let live = LiveAPI(dir: dir, datapath: datapath, status: status, config: config)
        let serving = ServingState()
        let handlers = APIHandlers(datapath: datapath, status: status, config: config, lifetimes: .default)
        let server = APIServer(socket: .path(live.socketPath, group: socketGroup), router: APIRouter(handlers: handlers),
                               limits: limits, serving: serving, ready: { status.snapshot.ready }, logger: logger)
        live.server = Task { try await server.run() }
        defer { live.server?.cancel() }
        let metricsServing = ServingState()
        if let metrics {
            let listener = APIServer(socket: .tcp(metrics), router: APIRouter(handlers: handlers, scope: .metrics),
                                     limits: limits, serving: metricsServing, logger: logger)
            live.metricsServer = Task { try await listener.run() }
        }
        defer { live.metricsServer?.cancel() }
        // Generous: a full run shares two cores between the end-to-end suites' daemons and the
        // BPF program tests' process (BlockingTests says more).
        let deadline = ContinuousClock.now + .seconds(180)
        while !(serving.isServing || (!attached && FileManager.default.fileExists(atPath: live.socketPath)))
                || (metrics != nil && !metricsServing.isServing) {
            guard ContinuousClock.now < deadline else { throw TestFailure("the API server did not start") }
            try await Task.sleep(for: .milliseconds(10))
        }
        live.metricsAddress = metricsServing.path
        let result = try await body(live)
        live.server?.cancel()
        live.metricsServer?.cancel()
        _ = try? await live.server?.value
        _ = try? await live.metricsServer?.value
        return result
    }

    // MARK: requests

    func get(_ uri: String, accept: String = MediaType.json) async throws -> HTTPResult {
        try await TestHTTP.request(socketPath: socketPath, method: .GET, uri: uri, headers: [("Accept", accept)])
    }

    func delete(_ uri: String) async throws -> HTTPResult {
        try await TestHTTP.request(socketPath: socketPath, method: .DELETE, uri: uri)
    }

    func decode<T: Decodable>(_ type: T.Type, _ result: HTTPResult) throws -> T {
        try APIJSON.decoder().decode(T.self, from: result.body)
    }

    // MARK: NAT table fixtures

    /// Writes `count` masqueraded TCP flows (both entries of each pair) straight into masq_nat_v4:
    /// pod 10.244.1.x:port -> 100.0.0.2:8080 translated to 100.0.0.1:(32768+i). IPv6: the same
    /// flows in masq_nat_v6, each address inside fd00::/96 (`v6`).
    func fillFlows(_ count: Int, dport: UInt16 = 8080, proto: UInt8 = 6, family: NATFamily = .ipv4) async throws {
        let nat = try await datapath.map(family == .ipv6 ? MASQ_MAP_NAT_V6 : MASQ_MAP_NAT_V4)
        try Self.fill(nat, count: count, dport: dport, proto: proto, family: family)
    }

    /// An IPv4 fixture address's IPv6 twin: fd00::/96 and the 32 bits (100.0.0.2 is fd00::6400:2).
    static func v6(_ networkOrder: UInt32) -> IPv6Address {
        IPv6Address(bytes: [0xfd, 0] + [UInt8](repeating: 0, count: 10) + withUnsafeBytes(of: networkOrder) { Array($0) })
    }

    static func fill(_ nat: BPFMap, count: Int, dport: UInt16 = 8080, proto: UInt8 = 6, first: Int = 0,
                     family: NATFamily = .ipv4) throws {
        let now = NATEntries.bootTimeNow()
        for i in first..<first + count {
            let pod = IPv4Address(hostOrder: IPv4Address("10.244.0.0")!.hostOrder | UInt32(i / 30000) << 8 | UInt32(1 + i % 250))
            let podPort = UInt16(10000 + (i / 250) % 30000)
            let snatPort = UInt16(truncatingIfNeeded: 1024 + i % 64000)
            var egress = masq_nat_key_v4()
            egress.saddr = pod.networkOrder
            egress.daddr = IPv4Address("100.0.0.2")!.networkOrder
            egress.sport = podPort.bigEndian
            egress.dport = dport.bigEndian
            egress.proto = proto
            egress.dir = UInt8(MASQ_DIR_EGRESS)
            var out = masq_nat_entry_v4()
            out.to_addr = IPv4Address(snatAddress)!.networkOrder
            out.to_port = snatPort.bigEndian
            out.ifindex = 1
            out.created = now
            out.last_seen = now
            out.seen = UInt8(MASQ_SEEN_SYN)
            out.tcp_state = L4Protocol(number: proto) == .tcp ? UInt8(MASQ_TCP_ESTABLISHED) : 0
            out.packets = 1
            out.bytes = 60
            var ingress = masq_nat_key_v4()
            ingress.saddr = egress.daddr
            ingress.daddr = out.to_addr
            ingress.sport = egress.dport
            ingress.dport = out.to_port
            ingress.proto = proto
            ingress.dir = UInt8(MASQ_DIR_INGRESS)
            var back = out
            back.to_addr = egress.saddr
            back.to_port = egress.sport
            back.seen = UInt8(MASQ_SEEN_SYNACK | MASQ_SEEN_REPLY)
            switch family {
            case .ipv4:
                try nat.update(ingress, back)
                try nat.update(egress, out)
            case .ipv6:
                try nat.update(Self.v6(ingress), Self.v6(back))
                try nat.update(Self.v6(egress), Self.v6(out))
            }
        }
    }

    /// An IPv4 fixture key's IPv6 twin (ICMP echo becomes ICMPv6 echo).
    static func v6(_ key: masq_nat_key_v4) -> masq_nat_key_v6 {
        masq_nat_key_v6(saddr: masq_addr_v6(v6(key.saddr)), daddr: masq_addr_v6(v6(key.daddr)), sport: key.sport, dport: key.dport,
                        proto: key.proto == 1 ? 58 : key.proto, dir: key.dir, pad: 0)
    }

    /// An IPv4 fixture entry's IPv6 twin (the flow state as it is; ct.to_addr unused, zero).
    static func v6(_ value: masq_nat_entry_v4) -> masq_nat_entry_v6 {
        var ct = value
        ct.to_addr = 0
        return masq_nat_entry_v6(to_addr: masq_addr_v6(v6(value.to_addr)), ct: ct)
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

struct HTTPResult: Sendable {
    var status: Int
    var headers: HTTPHeaders
    var body: Data
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// A small HTTP/1.1 client on SwiftNIO's codec for the tests (masq-client's own is in an
/// executable target): one request per connection, the whole body collected.
enum TestHTTP {
    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// Fails (the connection is closed) when no complete answer came within `timeout`.
    static func request(socketPath: String, method: HTTPMethod, uri: String,
                        headers extra: [(String, String)] = [], timeout: TimeAmount = .seconds(30)) async throws -> HTTPResult {
        try await request(try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(unixDomainSocketPath: socketPath, channelInitializer: initialize), method: method, uri: uri,
                          headers: extra, timeout: timeout)
    }

    /// The same over TCP.
    static func request(host: String, port: Int, method: HTTPMethod, uri: String,
                        timeout: TimeAmount = .seconds(30)) async throws -> HTTPResult {
        try await request(try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: host, port: port, channelInitializer: initialize), method: method, uri: uri, headers: [], timeout: timeout)
    }

    @Sendable private static func initialize(_ channel: Channel) -> EventLoopFuture<Connection> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHTTPClientHandlers()
            return try Connection(wrappingChannelSynchronously: channel)
        }
    }

    private static func request(_ connection: Connection, method: HTTPMethod, uri: String,
                                headers extra: [(String, String)], timeout: TimeAmount) async throws -> HTTPResult {
        let channel = connection.channel
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        defer { deadline.cancel() }
        return try await connection.executeThenClose { inbound, outbound in
            var headers = HTTPHeaders([("Host", "masqd"), ("Connection", "close")])
            for (name, value) in extra { headers.add(name: name, value: value) }
            try await outbound.write(contentsOf: [.head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)),
                                                  .end(nil)])
            var result = HTTPResult(status: 0, headers: [:], body: Data())
            for try await part in inbound {
                switch part {
                case .head(let head):
                    result.status = Int(head.status.code)
                    result.headers = head.headers
                case .body(let buffer):
                    result.body.append(contentsOf: buffer.readableBytesView)
                case .end:
                    return result
                }
            }
            throw TestFailure("\(uri): the response ended before its end")
        }
    }
}

/// A raw Unix stream socket, for requests no well-behaved client sends.
final class RawSocket {
    let fd: Int32

    init(path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: Array(path.utf8) + [0])
        }
        let ok = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
        guard ok else {
            close(fd)
            throw TestFailure("connect \(path): \(String(cString: strerror(errno)))")
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Everything until the peer closes (or the 5 s timeout).
    func readAll() -> String {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            out.append(contentsOf: buffer[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A built binary of this package (masqd, masq-client): beside the test bundle, else in the
/// package's build folders.
func builtBinary(_ name: String) throws -> String {
    var candidates: [String] = []
    if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir.appendingPathComponent(name).path)
            dir = dir.deletingLastPathComponent()
        }
    }
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    for build in [".build-api", ".build"] {
        candidates.append(root.appendingPathComponent("\(build)/debug/\(name)").path)
    }
    guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw TestFailure("\(name) not found (tried \(candidates))")
    }
    return found
}

/// Runs a command to completion (bounded) and returns status and output.
func run(_ argv: [String], environment: [String: String] = [:], timeout: Duration = .seconds(30)) async throws
    -> (status: Int32, stdout: String, stderr: String)
{
    let result = try await Command.run(argv, timeout: timeout, environment: environment)
    if result.timedOut { throw TestFailure("\(argv.joined(separator: " ")) still runs after \(timeout)") }
    return (result.status, result.stdout, result.stderr)
}

/// Every test that runs a live server or masqd, one after another: each loads a datapath and
/// the machine may have two cores.
@Suite("live control API", .serialized, .enabled(if: isRoot, "needs root: loads BPF objects, mounts a bpffs, creates namespaces"))
struct LiveAPITests {}
