@preconcurrency import Glibc
import Blocking
import Logging
import Synchronization

/// rtnetlink notifications of links, addresses and routes (IPv4 and IPv6), as a stream of
/// "something relevant changed" signals. What changed is not passed on: the reader of the
/// stream reads the whole network again, which also covers what an overrun lost.
///
/// The socket is waited on by a `PollLoop` on the blocking pool, so no Swift concurrency
/// thread ever blocks on it. The stream holds at most one pending signal: a burst while the
/// reader is busy becomes one more read, not one per message.
public final class NetlinkMonitor: Sendable {
    static let groups = RTNL.groupLink | RTNL.groupIPv4Address | RTNL.groupIPv6Address
        | RTNL.groupIPv4Route | RTNL.groupIPv6Route

    /// One element per relevant change (or burst of them); finishes when the monitor stops.
    public let changes: AsyncStream<Void>
    /// Why the monitor stopped on its own, if it did.
    private let failure = Mutex<NetlinkError?>(nil)
    private let loop: PollLoop

    /// Subscribes now: every change after `init` returns is signalled.
    public init(logger: Logger) throws(NetlinkError) {
        let socket = try NetlinkSocket(groups: Self.groups)
        do {
            loop = try PollLoop()
        } catch {
            throw .system(step: error.step, errno: error.errno)
        }
        let (changes, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        self.changes = changes
        loop.start(fd: socket.fd, onWake: { [self] _ in
            do throws(NetlinkError) {
                let datagram = try socket.receive(step: "receive notifications")
                if try Self.isRelevant(NetlinkMessage.parse(datagram)) {
                    continuation.yield()
                }
            } catch .system(_, ENOBUFS) {
                // The queue overran and notifications were lost: a full read catches up.
                logger.warning("Netlink notifications overran; reading the network again")
                continuation.yield()
            } catch .malformed(let what) {
                logger.warning("Ignored a malformed netlink notification", metadata: ["netlink.error": "\(what)"])
                continuation.yield()
            } catch {
                failure.withLock { $0 = error }
                return false
            }
            return true
        }, onEnd: { [self] errno in
            // The socket lives until the loop has ended.
            withExtendedLifetime(socket) {}
            if let errno { failure.withLock { $0 = .system(step: "poll", errno: errno) } }
            continuation.finish()
        })
    }

    /// Stops the subscription; returns once its loop has ended and released the socket.
    public func stop() async {
        await loop.stop()
    }

    /// The error that ended the monitor, nil when it was stopped.
    public var error: NetlinkError? { failure.withLock { $0 } }

    /// Links and addresses always matter; of routes only default routes do (the others come
    /// and go with every pod and never change which devices masquerade).
    static func isRelevant(_ messages: [NetlinkMessage]) throws(NetlinkError) -> Bool {
        for message in messages {
            switch message.type {
            case RTNL.newLink, RTNL.delLink, RTNL.newAddress, RTNL.delAddress, RTNL.messageOverrun:
                return true
            case RTNL.newRoute, RTNL.delRoute:
                if try RouteMessage(message).destinationLength == 0 { return true }
            default:
                continue
            }
        }
        return false
    }
}
