@preconcurrency import Glibc
import Foundation
import Logging
import Synchronization

/// rtnetlink notifications of links, addresses and routes (IPv4 and IPv6), as a stream of
/// "something relevant changed" signals. What changed is not passed on: the reader of the
/// stream reads the whole network again, which also covers what an overrun lost.
///
/// A dedicated thread blocks in poll(2) on the socket, so no Swift concurrency thread ever
/// blocks on it. The stream holds at most one pending signal: a burst while the reader is busy
/// becomes one more read, not one per message.
public final class NetlinkMonitor: Sendable {
    static let groups = RTNL.groupLink | RTNL.groupIPv4Address | RTNL.groupIPv6Address
        | RTNL.groupIPv4Route | RTNL.groupIPv6Route

    /// One element per relevant change (or burst of them); finishes when the monitor stops.
    public let changes: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation
    /// Why the monitor stopped on its own, if it did.
    private let failure = Mutex<NetlinkError?>(nil)
    /// A pipe whose write end wakes the thread to stop.
    private let wake: (read: Int32, write: Int32)
    private let finished = DispatchSemaphore(value: 0)

    /// Subscribes now: every change after `init` returns is signalled.
    public init(logger: Logger) throws(NetlinkError) {
        let socket = try NetlinkSocket(groups: Self.groups)
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw .system(step: "pipe", errno: errno) }
        for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        wake = (ends[0], ends[1])
        (changes, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let thread = Thread { [self, socket] in
            self.read(socket, logger: logger)
            self.continuation.finish()
            self.finished.signal()
        }
        thread.name = "masqd-netlink"
        thread.start()
    }

    /// Stops the thread and waits for it (bounded), then releases the socket.
    public func stop() {
        var one: UInt8 = 1
        _ = write(wake.write, &one, 1)
        _ = finished.wait(timeout: .now() + 2)
        close(wake.read)
        close(wake.write)
    }

    /// The error that ended the monitor, nil when it was stopped.
    public var error: NetlinkError? { failure.withLock { $0 } }

    private func read(_ socket: NetlinkSocket, logger: Logger) {
        var fds = [pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
        while true {
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 else {
                if errno == EINTR { continue }
                failure.withLock { $0 = .system(step: "poll", errno: errno) }
                return
            }
            if fds[1].revents != 0 { return }
            guard fds[0].revents != 0 else { continue }
            do {
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
                return
            }
        }
    }

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
