import API
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// Why a request to masqd failed, as the one line the user reads.
struct ClientError: Error, CustomStringConvertible {
    var description: String
}

/// How long masq-client waits for masqd (`--request-timeout`), in seconds as typed.
struct RequestTimeout: Sendable {
    static let maxSeconds: Double = 86_400
    var seconds: Double

    var amount: TimeAmount { .nanoseconds(Int64(seconds * 1e9)) }
    /// "30", "0.5".
    var text: String { String(format: "%g", seconds) }
}

/// HTTP/1.1 to masqd over its Unix socket: one connection per request, SwiftNIO's HTTP client
/// codec, responses decoded into the API's types or streamed line by line.
struct UnixHTTPClient: Sendable {
    let socketPath: String
    /// How long connecting and an answer may take (a stream: its head); nil: no limit.
    let timeout: RequestTimeout?

    typealias Connection = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>

    /// GET (or DELETE) a JSON endpoint and decode its body as `T`. Returns the raw body too,
    /// for `-o json`.
    func request<T: Decodable>(_ route: Route, query: [(String, String)] = [], as type: T.Type = T.self) async throws -> (T, Data) {
        let body = try await fetch(route, query: query)
        do {
            return (try APIJSON.decoder().decode(T.self, from: body), body)
        } catch {
            throw ClientError(description: "masqd at \(socketPath) answered \(route.path) with a body this client cannot read: \(error)")
        }
    }

    /// The raw body of a JSON (or text) endpoint with a 2xx status.
    func fetch(_ route: Route, query: [(String, String)] = []) async throws -> Data {
        var body = Data()
        try await exchange(route, query: query, accept: MediaType.json) { chunk in
            body.append(contentsOf: chunk.readableBytesView)
        }
        return body
    }

    /// masqd's verdict on itself (`GET /v1/healthz`), also when it answers 503, with the HTTP
    /// status: a Failure comes with 503, and the verdict is the answer, not an error.
    func health() async throws -> (health: HealthResponse, httpStatus: UInt, raw: Data) {
        var body = Data()
        let status = try await exchange(.healthz, query: [], accept: MediaType.json, alsoAccepting: [503]) { chunk in
            body.append(contentsOf: chunk.readableBytesView)
        }
        do {
            return (try APIJSON.decoder().decode(HealthResponse.self, from: body), status, body)
        } catch {
            // A 503 that is not a verdict (e.g. an API error's message) is reported as one.
            if let message = try? APIJSON.decoder().decode(APIError.self, from: body).message {
                throw ClientError(description: "\(message) (HTTP \(status))")
            }
            throw ClientError(description: "masqd at \(socketPath) answered \(Route.healthz.path) (HTTP \(status)) with a body this client cannot read: \(error)")
        }
    }

    /// Streams an NDJSON endpoint, calling `line` for each line as it arrives (never buffering
    /// more than one partial line) and `chunkEnd` once the lines of a chunk are read, and at the
    /// end. Throws if the stream is cut before its end.
    func streamLines(_ route: Route, query: [(String, String)] = [], _ line: (Data) throws -> Void,
                     chunkEnd: () throws -> Void = {}) async throws {
        // The start of a line cut by the chunk's end.
        var pending = Data()
        try await exchange(route, query: query, accept: MediaType.ndjson, streamed: true) { chunk in
            try chunk.withUnsafeReadableBytes { bytes in
                var start = 0
                while let newline = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) {
                    if pending.isEmpty {
                        if newline > start { try line(Data(bytes[start..<newline])) }
                    } else {
                        pending.append(contentsOf: bytes[start..<newline])
                        try line(pending)
                        pending.removeAll(keepingCapacity: true)
                    }
                    start = newline + 1
                }
                pending.append(contentsOf: bytes[start...])
            }
            try chunkEnd()
        }
        if !pending.isEmpty { try line(pending) }
        try chunkEnd()
    }

    /// One request: connects, sends, hands each body chunk of a 2xx (or `alsoAccepting`) answer to
    /// `body` and returns its status; any other answer becomes a ClientError carrying the API's
    /// message. `timeout` bounds the whole answer, or only its head when `streamed`.
    @discardableResult
    private func exchange(_ route: Route, query: [(String, String)], accept: String,
                          alsoAccepting: [UInt] = [], streamed: Bool = false,
                          body: (ByteBuffer) throws -> Void) async throws -> UInt {
        let connection: Connection
        do {
            // A Unix socket's connect does not wait: it succeeds or fails at once.
            connection = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.seconds(5))
                .connect(unixDomainSocketPath: socketPath) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        return try Connection(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw ClientError(description: "cannot reach masqd at \(socketPath): \(unreachable(error))")
        }
        // On expiry the connection is closed, which ends the reads below.
        let timer = timeout.map { timeout in
            connection.channel.eventLoop.scheduleTask(in: timeout.amount) { [channel = connection.channel] in
                channel.close(promise: nil)
            }
        }
        defer { timer?.cancel() }
        // Whether the timer closed the connection (a cancelled one fails its future).
        func timedOut() async -> Bool {
            guard let timer else { return false }
            timer.cancel()
            return (try? await timer.futureResult.get()) != nil
        }
        let uri = query.isEmpty ? route.path : route.path + "?" + QueryParameters.encode(query)
        let answered = { (code: UInt) in (200..<300).contains(code) || alsoAccepting.contains(code) }
        var status: HTTPResponseStatus?
        var errorBody = ByteBuffer()
        var complete = false
        do {
            try await connection.executeThenClose { inbound, outbound in
                var headers = HTTPHeaders()
                headers.add(name: "Host", value: "masqd")
                headers.add(name: "Accept", value: accept)
                headers.add(name: "Connection", value: "close")
                headers.add(name: "User-Agent", value: "masq-client/\(masqVersion)")
                let method: HTTPMethod = route.method == .delete ? .DELETE : .GET
                // One write: masqd may answer (and shut its side) as soon as it has parsed the head.
                try await outbound.write(contentsOf: [.head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: headers)),
                                                      .end(nil)])
                for try await part in inbound {
                    switch part {
                    case .head(let head):
                        status = head.status
                        if streamed { timer?.cancel() }
                    case .body(let chunk):
                        if let status, answered(status.code) {
                            try body(chunk)
                        } else {
                            var chunk = chunk
                            errorBody.writeBuffer(&chunk)
                        }
                    case .end:
                        complete = true
                    }
                    if complete { break }
                }
            }
        } catch {
            throw await timedOut() ? timeoutError : failure(error)
        }
        // A whole answer counts even when the timer fired just after it.
        if !complete, await timedOut() { throw timeoutError }
        guard let status else {
            throw ClientError(description: "masqd at \(socketPath) closed the connection without answering \(route.path)")
        }
        guard answered(status.code) else {
            let message = (try? APIJSON.decoder().decode(APIError.self, from: Data(errorBody.readableBytesView)))?.message
                ?? String(buffer: errorBody)
            throw ClientError(description: "\(message) (HTTP \(status.code))")
        }
        guard complete else { throw cutShort }
        return status.code
    }

    private var timeoutError: ClientError {
        ClientError(description: "masqd at \(socketPath) did not answer within \(timeout?.text ?? "?") s")
    }

    private var cutShort: ClientError {
        ClientError(description: "masqd at \(socketPath) closed the stream before its end (masqd stopped or failed mid-answer)")
    }

    /// A connection's failure as one line naming the socket; errors of the caller's `body` (and
    /// ClientErrors) pass unchanged.
    private func failure(_ error: Error) -> Error {
        switch error {
        case HTTPParserError.invalidEOFState:
            return cutShort
        // NIOHTTPDecoderError: it answered before it was asked.
        case is HTTPParserError, is NIOHTTPDecoderError:
            return ClientError(description: "masqd at \(socketPath): not an HTTP answer (is this masqd's socket?)")
        case let error as IOError:
            return ClientError(description: "masqd at \(socketPath): connection lost (\(String(cString: strerror(error.errnoCode))))")
        case is ChannelError:
            return ClientError(description: "masqd at \(socketPath): connection lost (\(error))")
        default:
            return error
        }
    }

    /// Why connecting failed, and what to do about it.
    private func unreachable(_ error: Error) -> String {
        switch error {
        case SocketAddressError.unixDomainSocketPathTooLong:
            // SwiftNIO's limit (the portable sockaddr_un size), below Linux's 107.
            return "socket path too long (\(socketPath.utf8.count) bytes, max 103)"
        case let error as IOError where error.errnoCode == EACCES:
            var info = stat()
            let group = stat(socketPath, &info) == 0 ? getgrgid(info.st_gid).map { " ('\(String(cString: $0.pointee.gr_name))')" } : nil
            return "permission denied: masq-client needs root, or membership of masqd's socket-group\(group ?? "")"
        case let error as IOError:
            return String(cString: strerror(error.errnoCode)) + " (is masqd running? --socket or MASQ_SOCKET picks another socket)"
        default:
            return "\(error) (is masqd running? --socket or MASQ_SOCKET picks another socket)"
        }
    }
}
