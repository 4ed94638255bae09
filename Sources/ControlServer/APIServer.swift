@preconcurrency import Glibc
import API
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
        /// Connections beyond this are closed as soon as they are accepted.
        var maxConnections = 1024
    }

    let socket: ControlSocket
    let router: APIRouter
    let limits: Limits
    let serving: ServingState
    let logger: Logger

    var description: String { "APIServer" }

    init(socket: ControlSocket, router: APIRouter, limits: Limits = Limits(), serving: ServingState, logger: Logger) {
        self.socket = socket
        self.router = router
        self.limits = limits
        self.serving = serving
        var logger = logger
        logger[metadataKey: "service"] = "api"
        self.logger = logger
    }

    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    func run() async throws {
        let (server, socketPath, created) = try await bind()
        defer {
            // A socket masqd bound goes with it; systemd's stays systemd's.
            if created, let socketPath { unlink(socketPath) }
        }
        serving.markServing(path: socketPath)
        logger.info("API serving", metadata: ["socket.path": "\(socketPath ?? "?")",
                                               "socket.activated": "\(!created)"])
        let open = ConnectionCount()
        do {
            // SIGTERM stops the API first: closing the listening socket ends the accept loop,
            // and the open connections are cancelled with it.
            try await withGracefulShutdownHandler {
                try await server.executeThenClose { inbound in
                    // Discarding: finished connection tasks are freed at once, so memory does not
                    // grow with the number of connections ever served.
                    try await withThrowingDiscardingTaskGroup { group in
                        for try await connection in inbound {
                            let count = open.opened()
                            group.addTask {
                                defer { open.closed() }
                                if count > limits.maxConnections {
                                    try? await connection.channel.close()
                                    return
                                }
                                await handle(connection)
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
        serving.markStopped()
        logger.info("API stopped")
    }

    /// Binds (or adopts) the listening socket. Returns it, its path, and whether masqd created it.
    private func bind() async throws -> (NIOAsyncChannel<Connection, Never>, String?, Bool) {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
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
                return try Connection(wrappingChannelSynchronously: channel,
                                      configuration: .init(isOutboundHalfClosureEnabled: true))
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
        }
    }

    /// Serves one connection's requests in order until it closes. Never throws: a failing
    /// connection is logged and closed, and the server goes on.
    private func handle(_ connection: Connection) async {
        let peer = await Self.peerCredentials(connection.channel)
        var logger = self.logger
        logger[metadataKey: "peer.uid"] = "\(peer.uid)"
        logger[metadataKey: "peer.pid"] = "\(peer.pid)"
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
                    let response = await router.respond(to: request)
                    logger.debug("Request", metadata: ["http.method": "\(h.method.rawValue)", "http.path": "\(request.path)"])
                    if try await !write(response, for: h, keepAlive: h.isKeepAlive, to: outbound, logger: logger) {
                        outbound.finish()
                        closing = true
                    }
                }
            }
        } catch {
            logger.debug("Connection ended on an error", metadata: ["error": "\(error)"])
        }
    }

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
            try await outbound.write(contentsOf: [.body(.byteBuffer(body)), .end(nil)])
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

/// Open connections, counted so that a flood of them is refused rather than served.
final class ConnectionCount: Sendable {
    private let count = Atomic<Int>(0)

    /// Counts a new connection; returns how many are open with it.
    func opened() -> Int { count.add(1, ordering: .relaxed).newValue }
    func closed() { count.subtract(1, ordering: .relaxed) }
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
