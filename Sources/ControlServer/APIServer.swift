@preconcurrency import Glibc
import API
import Daemon
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The control API: HTTP/1.1 on the Unix socket (bound here, or passed by systemd). One
/// `NIOAsyncChannel` per connection, handled in its own child task, so a slow or stuck client
/// holds only its own task; everything past the channel initializer is async/await.
struct APIServer: Service, CustomStringConvertible {
    /// Limits that keep one client from costing the daemon much.
    struct Limits: Sendable {
        /// Request bodies (no endpoint takes one) larger than this are answered 413.
        var maxBodyBytes = 64 * 1024
        /// The whole header section; larger is answered 431.
        var maxHeaderBytes = 16 * 1024
        var maxHeaderFields = 100
        /// A connection with no read and no completed write for this long is closed.
        var idleTimeout: TimeAmount = .seconds(30)
        /// A whole request (head and body) must arrive within this, counted from when the
        /// connection can send one (accepted, or its last answer written) and not restarted by
        /// each byte: a client dripping its headers cannot hold a connection for long.
        var requestTimeout: TimeAmount = .seconds(10)
        /// Connections served in full, in all and per peer uid (Unix socket; every TCP peer is
        /// one "unknown" uid): one user cannot take all of them.
        var maxConnections = 1024
        var maxConnectionsPerPeer = 256
        /// Connections beyond those limits, up to this many more, are answered healthz only
        /// (anything else 503), within `reserveRequestTimeout`: probes keep working while the
        /// limits are reached. Beyond the reserve, connections are closed at once.
        var healthReserve = 64
        var reserveRequestTimeout: TimeAmount = .seconds(2)
        /// Large bodies (conntrack pages, port listings) built or being written at once, and how
        /// long a request waits for its turn before it is answered 503 (`LargeBodies`).
        var largeBodies = 8
        var largeBodyWait: Duration = .seconds(10)
    }

    let socket: ControlSocket
    let router: APIRouter
    let limits: Limits
    private let largeBodies: LargeBodies
    let serving: ServingState
    /// Whether the daemon is ready to answer (the datapath attached). Until it is, or until
    /// `startupWait` has passed, connections wait in the listen queue: a request that raced the
    /// start (the one that triggered socket activation) is answered once masqd is ready,
    /// rather than with "not attached yet".
    let ready: @Sendable () -> Bool
    var startupWait: Duration = .seconds(20)
    let logger: Logger

    var description: String { "APIServer" }

    init(socket: ControlSocket, router: APIRouter, limits: Limits = Limits(), serving: ServingState,
         ready: @escaping @Sendable () -> Bool = { true }, logger: Logger) {
        self.socket = socket
        self.router = router
        self.limits = limits
        largeBodies = LargeBodies(permits: limits.largeBodies)
        self.serving = serving
        self.ready = ready
        var logger = logger
        logger[metadataKey: "service"] = "api"
        self.logger = logger
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    func run() async throws {
        let accepted = AcceptedConnections()
        let (server, socketPath, created) = try await bind(registering: accepted)
        defer {
            // A socket masqd bound goes with it; systemd's stays systemd's.
            if created, let socketPath, case .path = socket { unlink(socketPath) }
        }
        if !(await waitUntilReady()) {
            logger.warning("Serving before the datapath is attached", metadata: ["wait": "\(startupWait)"])
        }
        serving.markServing(path: socketPath)
        if case .tcp = socket {
            logger.info("Metrics listener serving /metrics and /healthz", metadata: ["server.address": "\(socketPath ?? "?")"])
        } else {
            logger.info("API serving", metadata: ["socket.path": "\(socketPath ?? "?")",
                                                   "socket.activated": "\(!created)"])
        }
        let open = ConnectionLimiter(limits)
        do {
            // SIGTERM stops the API first: closing the listening socket ends the accept loop,
            // and the open connections are cancelled with it.
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { inbound in
                    // Discarding: finished connection tasks are freed at once, so memory does not
                    // grow with the number of connections ever served.
                    try await withThrowingDiscardingTaskGroup { group in
                        for try await connection in inbound {
                            accepted.remove(connection)
                            group.addTask {
                                let peer = await Self.peerCredentials(connection.channel)
                                let admission = open.admit(uid: peer.uid)
                                defer { open.release(admission, uid: peer.uid) }
                                guard admission != .refused else {
                                    // Through executeThenClose: its writer must be finished.
                                    try? await connection.executeThenClose { _, _ in }
                                    return
                                }
                                await handle(connection, peer: peer, healthOnly: admission == .healthOnly)
                            }
                        }
                        group.cancelAll()
                    }
                }
            } onGracefulShutdown: {
                server.channel.close(promise: nil)
            }
        } catch is CancellationError {
            // Cancelled with the service group.
        } catch let error as ChannelError where error == .ioOnClosedChannel || error == .alreadyClosed {
            // The listening socket was closed for shutdown.
        }
        await accepted.closeAll()
        serving.markStopped()
        if case .tcp = socket {
            logger.info("Metrics listener stopped", metadata: ["server.address": "\(socketPath ?? "?")"])
        } else {
            logger.info("API stopped", metadata: ["socket.path": "\(socketPath ?? "?")"])
        }
    }

    /// Waits (bounded by `startupWait`, cut short by shutdown) until `ready()`; returns whether
    /// it is. Nothing is accepted meanwhile beyond what the async channel buffers.
    private func waitUntilReady() async -> Bool {
        let deadline = ContinuousClock.now + startupWait
        while !ready() {
            guard ContinuousClock.now < deadline, !Task.isCancelled, !Task.isShuttingDownGracefully else { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    /// Binds (or adopts) the listening socket. Returns it, its path (or TCP address), and whether
    /// masqd created it.
    private func bind(registering accepted: AcceptedConnections) async throws -> (NIOAsyncChannel<Connection, Never>, String?, Bool) {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            // The metrics listener rebinds its TCP port at once after a restart.
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // A client may shut its sending side after the request and still read the answer.
            .childChannelOption(.allowRemoteHalfClosure, value: true)
        let limits = self.limits
        let initializer: @Sendable (Channel) -> EventLoopFuture<Connection> = { channel in
            channel.eventLoop.makeCompletedFuture {
                let pipeline = channel.pipeline.syncOperations
                try pipeline.addHandler(IdleStateHandler(allTimeout: limits.idleTimeout))
                try pipeline.addHandler(IdleConnectionCloser())
                var decoderLimits = NIOHTTPDecoderLimitConfiguration()
                decoderLimits.maxHeaderListSize = limits.maxHeaderBytes
                decoderLimits.maxHeaderFieldSize = limits.maxHeaderBytes
                decoderLimits.maxHeaderFieldCount = limits.maxHeaderFields
                try pipeline.configureHTTPServerPipeline(
                    withPipeliningAssistance: false, withErrorHandling: false,
                    withOutboundHeaderValidation: true, withEncoderConfiguration: .init(),
                    withDecoderLimitConfiguration: decoderLimits)
                try pipeline.addHandler(HTTPProtocolErrorResponder())
                try pipeline.addHandler(RequestDeadline(timeout: limits.requestTimeout))
                let connection = try Connection(wrappingChannelSynchronously: channel,
                                                configuration: .init(isOutboundHalfClosureEnabled: true))
                accepted.add(connection)
                return connection
            }
        }
        switch socket {
        case .inherited(let fd, let path):
            let server = try await bootstrap.bind(fd, childChannelInitializer: initializer)
            return (server, path, false)
        case .path(let path, let group):
            try ControlSocket.prepareDirectory(for: path)
            let temporary = path + ".\(getpid()).new"
            unlink(temporary)
            let server = try await bootstrap.bind(unixDomainSocketPath: temporary, cleanupExistingSocketFile: true,
                                                  childChannelInitializer: initializer)
            do {
                try ControlSocket.publish(temporary: temporary, at: path, group: group)
            } catch {
                unlink(temporary)
                try? await server.channel.close()
                throw error
            }
            return (server, path, true)
        case .tcp(let address):
            // Literal addresses only, no name lookup; the first that binds is used, the last
            // one's error is thrown.
            let hosts = address.bindAddresses
            var index = hosts.startIndex
            let server: NIOAsyncChannel<Connection, Never>
            while true {
                do {
                    server = try await bootstrap.bind(to: try SocketAddress(ipAddress: hosts[index], port: address.port),
                                                      childChannelInitializer: initializer)
                    break
                } catch where index + 1 < hosts.endIndex {
                    index += 1
                }
            }
            // The address as bound (port 0 asks the kernel for one).
            let bound = server.channel.localAddress.flatMap { local in local.port.map { ServeAddress(host: address.host, port: $0) } }
            return (server, (bound ?? address).description, true)
        }
    }

    /// Serves one connection's requests in order until it closes. Never throws: a failing
    /// connection is logged and closed, and the server goes on. `healthOnly`: a connection of
    /// the reserve, answered healthz and nothing else, once.
    private func handle(_ connection: Connection, peer: PeerCredentials, healthOnly: Bool) async {
        var logger = self.logger
        logger[metadataKey: "peer.uid"] = "\(peer.uid)"
        logger[metadataKey: "peer.pid"] = "\(peer.pid)"
        if healthOnly {
            connection.channel.triggerUserOutboundEvent(RequestDeadline.Restart(timeout: limits.reserveRequestTimeout),
                                                        promise: nil)
        }
        do {
            try await connection.executeThenClose { inbound, outbound in
                var head: HTTPRequestHead?
                var bodyBytes = 0
                // After the last response: its bytes are flushed and the output shut (finish),
                // then whatever the client still sends is read and dropped until it closes, so
                // that closing never discards an answer the client has not read yet.
                var closing = false
                var drained = 0
                for try await part in inbound {
                    if closing {
                        if case .body(let bytes) = part { drained += bytes.readableBytes }
                        if drained > limits.maxBodyBytes * 16 { return }
                        continue
                    }
                    switch part {
                    case .head(let h):
                        head = h
                        bodyBytes = h.headers.first(name: "content-length").flatMap(Int.init) ?? 0
                    case .body(let bytes):
                        bodyBytes += bytes.readableBytes
                    case .end:
                        break
                    }
                    if let h = head, bodyBytes > limits.maxBodyBytes {
                        // Answer at once: reading the rest would cost what the limit saves.
                        let response = APIRouter.errorResponse(APIError.payloadTooLarge(
                            "request body larger than \(limits.maxBodyBytes) bytes (no endpoint takes a body)"))
                        _ = try await write(response, for: h, keepAlive: false, to: outbound, logger: logger)
                        outbound.finish()
                        closing = true
                        continue
                    }
                    guard case .end = part, let h = head else { continue }
                    head = nil
                    bodyBytes = 0
                    let request = APIRequest(method: h.method.rawValue, uri: h.uri,
                                             accept: h.headers.first(name: "accept"), peer: peer)
                    var permit: LargeBodies.Permit?
                    let response: APIResponse
                    if healthOnly && router.match(method: request.method, path: request.path) != .found(.healthz) {
                        response = APIRouter.errorResponse(APIError.unavailable(
                            "too many connections: beyond its connection limits masqd answers healthz only"))
                    } else if router.buildsLargeBody(request) {
                        // Held until the answer is written (the permit goes with this iteration).
                        permit = await largeBodies.acquire(within: limits.largeBodyWait)
                        response = permit == nil
                            ? APIRouter.errorResponse(APIError.unavailable(
                                "busy: \(limits.largeBodies) large answers are being written to clients that read them slowly; try again"))
                            : await router.respond(to: request)
                    } else {
                        response = await router.respond(to: request)
                    }
                    logger.debug("Request", metadata: ["http.method": "\(h.method.rawValue)", "http.path": "\(request.path)"])
                    if try await !write(response, for: h, keepAlive: h.isKeepAlive && !healthOnly, to: outbound, logger: logger) {
                        outbound.finish()
                        closing = true
                    }
                    withExtendedLifetime(permit) {}
                }
            }
        } catch {
            logger.debug("Connection ended on an error", metadata: ["error": "\(error)"])
        }
    }

    /// The size of the parts a body is written in.
    static let bodyPart = 16 * 1024

    /// Writes `response`; returns whether the connection stays open for another request.
    private func write(_ response: APIResponse, for request: HTTPRequestHead, keepAlive: Bool,
                       to outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, logger: Logger) async throws -> Bool {
        var headers = HTTPHeaders()
        switch response {
        case .body(let status, let contentType, let body, let extra):
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: String(body.readableBytes))
            for (name, value) in extra { headers.add(name: name, value: value) }
            headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
            try await outbound.write(.head(HTTPResponseHead(version: request.version, status: .init(statusCode: status), headers: headers)))
            // In copied parts, each written once the connection takes more: when the last one is
            // handed over, the rest has reached the socket and the whole body can go, whereas
            // one write would keep it until a slow client had read it all.
            guard body.readableBytes > Self.bodyPart else {
                try await outbound.write(contentsOf: [.body(.byteBuffer(body)), .end(nil)])
                return keepAlive
            }
            var rest = body
            while let part = rest.readSlice(length: min(Self.bodyPart, rest.readableBytes)), part.readableBytes > 0 {
                try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: part.readableBytesView))))
            }
            try await outbound.write(.end(nil))
            return keepAlive
        case .stream(let contentType, let produce):
            // HTTP/1.1 streams chunked; HTTP/1.0 has no chunks, so the end of the body is the close.
            let chunked = request.version.major > 1 || (request.version.major == 1 && request.version.minor >= 1)
            let keep = keepAlive && chunked
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Connection", value: keep ? "keep-alive" : "close")
            try await outbound.write(.head(HTTPResponseHead(version: request.version, status: .ok, headers: headers)))
            do {
                try await produce(ResponseBodyWriter { buffer in try await outbound.write(.body(.byteBuffer(buffer))) })
            } catch {
                // The status is out already: say what broke in a last line and close without the
                // terminating chunk, so the client sees a cut stream, never a complete-looking one.
                logger.warning("Stream failed", metadata: ["http.path": "\(request.uri)", "error": "\(error)"])
                if case .body(_, _, let body, _) = APIRouter.errorResponse(error) {
                    try? await outbound.write(.body(.byteBuffer(body)))
                }
                return false
            }
            try await outbound.write(.end(nil))
            return keep
        }
    }

    /// SO_PEERCRED of a Unix-socket connection; `.unknown` (not root) when it cannot be read.
    static func peerCredentials(_ channel: Channel) async -> PeerCredentials {
        guard let provider = channel as? SocketOptionProvider else { return .unknown }
        do {
            let cred: PeerCredentials.UCred = try await provider.unsafeGetSocketOption(
                level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED)).get()
            return PeerCredentials(pid: cred.pid, uid: cred.uid, gid: cred.gid)
        } catch {
            return .unknown
        }
    }
}

/// Open connections, counted in all and per peer uid, so that a flood of them is refused
/// rather than served, and one user cannot take every connection from the others.
final class ConnectionLimiter: Sendable {
    enum Admission: Sendable, Equatable {
        /// Within the limits: served in full.
        case full
        /// Over a limit, within the reserve: healthz only.
        case healthOnly
        /// Over a limit and the reserve full: closed at once.
        case refused
    }

    private struct Counts {
        var full = 0
        var reserve = 0
        var byPeer: [UInt32: Int] = [:]
    }

    private let limits: APIServer.Limits
    private let counts = Mutex(Counts())

    init(_ limits: APIServer.Limits) {
        self.limits = limits
    }

    /// Counts a new connection of peer `uid`; say `release` with the answer when it closes.
    func admit(uid: UInt32) -> Admission {
        counts.withLock { c in
            if c.full < limits.maxConnections && c.byPeer[uid, default: 0] < limits.maxConnectionsPerPeer {
                c.full += 1
                c.byPeer[uid, default: 0] += 1
                return .full
            }
            guard c.reserve < limits.healthReserve else { return .refused }
            c.reserve += 1
            return .healthOnly
        }
    }

    func release(_ admission: Admission, uid: UInt32) {
        counts.withLock { c in
            switch admission {
            case .full:
                c.full -= 1
                c.byPeer[uid, default: 1] -= 1
                if c.byPeer[uid] == 0 { c.byPeer[uid] = nil }
            case .healthOnly:
                c.reserve -= 1
            case .refused:
                break
            }
        }
    }
}

/// Closes a connection that has not sent a whole request within its timeout, counted from
/// when it may send one (accepted, or its last answer written) and not restarted by each byte.
/// It runs on the event loop, where the request's parts arrive: a request that came in time is
/// answered however long its connection's task waits to run on a busy machine. Disarmed while
/// requests are being answered; armed again, and never disarmed, once the output is shut (the
/// connection only drains then).
final class RequestDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    /// Restarts the deadline with another timeout (the health reserve's shorter one).
    struct Restart: Sendable {
        var timeout: TimeAmount
    }

    private var timeout: TimeAmount
    private var scheduled: Scheduled<Void>?
    /// Requests received whole and not yet answered (a client may pipeline).
    private var unanswered = 0
    private var draining = false

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data), !draining {
            unanswered += 1
            disarm()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            unanswered = max(unanswered - 1, 0)
            if unanswered == 0 { arm(context) }
        }
        context.write(data, promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output {
            draining = true
            arm(context)
        }
        context.close(mode: mode, promise: promise)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let restart = event as? Restart else {
            return context.triggerUserOutboundEvent(event, promise: promise)
        }
        timeout = restart.timeout
        if scheduled != nil { arm(context) }
        promise?.succeed()
    }

    private func arm(_ context: ChannelHandlerContext) {
        scheduled?.cancel()
        let channel = context.channel
        scheduled = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    private func disarm() {
        scheduled?.cancel()
        scheduled = nil
    }
}

/// Connections accepted but not yet taken from the listener's stream. Cancelling the accept
/// loop drops those still buffered, and NIO requires each to be closed through
/// `executeThenClose` first (else it traps): `closeAll` does that when the server stops.
final class AcceptedConnections: Sendable {
    private let waiting = Mutex<[ObjectIdentifier: APIServer.Connection]>([:])

    func add(_ connection: APIServer.Connection) {
        waiting.withLock { $0[ObjectIdentifier(connection.channel)] = connection }
    }

    func remove(_ connection: APIServer.Connection) {
        _ = waiting.withLock { $0.removeValue(forKey: ObjectIdentifier(connection.channel)) }
    }

    func closeAll() async {
        let left = waiting.withLock { waiting in defer { waiting = [:] }; return Array(waiting.values) }
        for connection in left { try? await connection.executeThenClose { _, _ in } }
    }
}

/// Whether (and where) the API serves, for the systemd notifier.
final class ServingState: Sendable {
    private let state = Mutex<(serving: Bool, path: String?)>((false, nil))

    func markServing(path: String?) { state.withLock { $0 = (true, path) } }
    func markStopped() { state.withLock { $0.serving = false } }
    var isServing: Bool { state.withLock { $0.serving } }
    var path: String? { state.withLock { $0.path } }
}

/// Closes a connection when `IdleStateHandler` reports it idle (no reads, no completed writes).
final class IdleConnectionCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// Answers a request the HTTP decoder rejects (malformed, headers too large) with a JSON error
/// and lets the decoder close the connection; passes the error on.
final class HTTPProtocolErrorResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var responding = false

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError, !responding {
            let apiError: APIError = parserError == .headerOverflow
                ? .headersTooLarge("request headers too large")
                : .badRequest("malformed HTTP request (\(parserError))")
            if case .body(let status, let contentType, let body, _) = APIRouter.errorResponse(apiError) {
                let headers = HTTPHeaders([("Content-Type", contentType), ("Content-Length", String(body.readableBytes)),
                                           ("Connection", "close")])
                context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: status), headers: headers))), promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head: responding = true
        case .end: responding = false
        case .body: break
        }
        context.write(data, promise: promise)
    }
}
