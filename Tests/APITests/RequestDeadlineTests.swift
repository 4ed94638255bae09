@testable import ControlServer
import NIOCore
import NIOEmbedded
import NIOHTTP1
import Testing

/// The request deadline on the event loop, with the clock in the test's hands: only the
/// request's arrival and the answer's end move it, never when the connection's task runs.
@Suite("request deadline")
struct RequestDeadlineTests {
    private let head = HTTPServerRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/v1/healthz"))
    private let answer = HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok))

    private func connection(timeout: TimeAmount = .seconds(4)) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: RequestDeadline(timeout: timeout))
        try channel.connect(to: SocketAddress(unixDomainSocketPath: "/masq-test")).wait()
        return channel
    }

    @Test("a connection that sends nothing is closed at the deadline, and dripping bytes does not restart it")
    func silentAndDripping() throws {
        let silent = try connection()
        silent.embeddedEventLoop.advanceTime(by: .milliseconds(3900))
        #expect(silent.isActive)
        silent.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(!silent.isActive)

        let dripping = try connection()
        try dripping.writeInbound(head)
        for _ in 0..<3 {
            dripping.embeddedEventLoop.advanceTime(by: .seconds(1))
            try dripping.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "x")))
        }
        dripping.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!dripping.isActive)
    }

    @Test("a request that arrived whole is not cut however long its answer takes; the next one's deadline starts at the answer's end")
    func slowAnswer() throws {
        let channel = try connection()
        try channel.writeInbound(head)
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        // The connection's task waits a minute to run (a starved pool), then answers.
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        #expect(channel.isActive)
        try channel.writeOutbound(answer)
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(3900))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        #expect(!channel.isActive)
    }

    @Test("pipelined requests: the deadline stays off until the last one received is answered")
    func pipelined() throws {
        let channel = try connection()
        for _ in 0..<2 {
            try channel.writeInbound(head)
            try channel.writeInbound(HTTPServerRequestPart.end(nil))
        }
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive)
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(!channel.isActive)
    }

    @Test("the health reserve's restart shortens it; once the output is shut the drain is bounded whatever arrives")
    func restartAndDrain() throws {
        let reserve = try connection(timeout: .seconds(10))
        reserve.embeddedEventLoop.advanceTime(by: .seconds(5))
        reserve.pipeline.triggerUserOutboundEvent(RequestDeadline.Restart(timeout: .seconds(2)), promise: nil)
        reserve.embeddedEventLoop.advanceTime(by: .milliseconds(2100))
        #expect(!reserve.isActive)

        let draining = try connection()
        try draining.writeInbound(head)
        try draining.writeInbound(HTTPServerRequestPart.end(nil))
        try draining.writeOutbound(HTTPServerResponsePart.end(nil))
        draining.close(mode: .output, promise: nil)
        // What the client still sends is read and dropped; a whole request does not disarm it.
        try draining.writeInbound(head)
        try draining.writeInbound(HTTPServerRequestPart.end(nil))
        draining.embeddedEventLoop.advanceTime(by: .seconds(5))
        #expect(!draining.isActive)
    }
}
