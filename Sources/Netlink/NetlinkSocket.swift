@preconcurrency import Glibc
import CMasq
import Foundation

/// struct sockaddr_nl (linux/netlink.h): family, padding, port id, multicast group bits.
private struct SockaddrNL {
    var family = UInt16(AF_NETLINK)
    var pad: UInt16 = 0
    var portID: UInt32 = 0
    var groups: UInt32 = 0
}

/// A NETLINK_ROUTE socket of the calling thread's network namespace: dumps on request, and
/// the multicast groups it was bound to. Used by one thread at a time (the reading thread of
/// a monitor, or the caller of a dump), hence unchecked.
final class NetlinkSocket: @unchecked Sendable {
    let fd: Int32
    private var sequence: UInt32 = 0
    /// One datagram: dumps fill up to a page or so per datagram; 64 KiB is never truncated.
    private var buffer = [UInt8](repeating: 0, count: 65536)

    /// A socket subscribed to `groups` (RTNL.group* bits; 0 for a dump-only socket).
    /// `receiveTimeout` bounds every blocking receive.
    init(groups: UInt32 = 0, receiveTimeout: Duration = .seconds(5)) throws(NetlinkError) {
        fd = socket(AF_NETLINK, CMASQ_SOCK_RAW_CLOEXEC, RTNL.netlinkRoute)
        guard fd >= 0 else { throw .system(step: "socket", errno: errno) }
        var address = SockaddrNL(groups: groups)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<SockaddrNL>.size))
            }
        }
        guard bound == 0 else {
            let e = errno
            close(fd)
            throw .system(step: "bind groups 0x\(String(groups, radix: 16))", errno: e)
        }
        let seconds = receiveTimeout.components.seconds
        var timeout = timeval(tv_sec: Int(seconds), tv_usec: Int(receiveTimeout.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if groups != 0 {
            // A burst (a bond rebuilt, hundreds of pod veths) must not overrun the queue; an
            // overrun is survivable (the watcher reads everything again) but wasteful.
            var size: Int32 = 4 << 20
            if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size)) != 0 {
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
        }
    }

    deinit { close(fd) }

    /// Every object of one kind, e.g. `dump(RTNL.getAddress, header: RTNL.ifaddrmsgSize)`.
    /// The request carries a zeroed family header of `header` bytes (family AF_UNSPEC: all).
    /// Throws `.dumpInterrupted` when the kernel reports that the dump raced a change.
    func dump(_ type: UInt16, header: Int, name: String) throws(NetlinkError) -> [NetlinkMessage] {
        sequence &+= 1
        let request = NetlinkMessage.request(
            type: type, flags: RTNL.flagRequest | RTNL.flagDump, sequence: sequence,
            body: [UInt8](repeating: 0, count: align(header)))
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == request.count else { throw .system(step: "send \(name)", errno: errno) }

        var result: [NetlinkMessage] = []
        var interrupted = false
        while true {
            let datagram = try receive(step: "receive \(name)")
            for message in try NetlinkMessage.parse(datagram) where message.sequence == sequence {
                if message.flags & RTNL.flagDumpInterrupted != 0 { interrupted = true }
                switch message.type {
                case RTNL.messageDone:
                    let code = message.errorCode
                    if code > 0 { throw .kernel(request: name, errno: code) }
                    if interrupted { throw .dumpInterrupted(request: name) }
                    return result
                case RTNL.messageError:
                    throw .kernel(request: name, errno: message.errorCode)
                default:
                    result.append(message)
                }
            }
        }
    }

    /// One request answered by one message, e.g. an RTM_GETROUTE lookup: `body` follows the
    /// header as given. Throws the kernel's error when it answers with one.
    func request(_ type: UInt16, body: [UInt8], name: String) throws(NetlinkError) -> NetlinkMessage {
        sequence &+= 1
        let request = NetlinkMessage.request(type: type, flags: RTNL.flagRequest, sequence: sequence, body: body)
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        guard sent == request.count else { throw .system(step: "send \(name)", errno: errno) }
        while true {
            let datagram = try receive(step: "receive \(name)")
            for message in try NetlinkMessage.parse(datagram) where message.sequence == sequence {
                if message.type == RTNL.messageError { throw .kernel(request: name, errno: message.errorCode) }
                return message
            }
        }
    }

    /// One datagram; blocks up to the receive timeout. EINTR is retried.
    func receive(step: String) throws(NetlinkError) -> ArraySlice<UInt8> {
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n >= 0 { return buffer[0..<n] }
            if errno == EINTR { continue }
            throw .system(step: step, errno: errno)
        }
    }
}
