@preconcurrency import Glibc
import NetworkTypes

/// Which device the kernel routes a destination through: one RTM_GETROUTE request in the
/// daemon's network namespace. Used by `/v1/explain` when the caller names no device.
public enum RouteLookup {
    /// The ifindex of the output device for `destination`, or nil when there is no route.
    public static func outputInterface(for destination: IPAddress) -> UInt32? {
        let (family, address): (UInt8, [UInt8]) = switch destination {
        case .v4(let a): (UInt8(AF_INET), [a.bytes.0, a.bytes.1, a.bytes.2, a.bytes.3])
        case .v6(let a): (UInt8(AF_INET6), a.bytes)
        }
        // rtmsg: family, dst_len, then zeros (src_len, tos, table, protocol, scope, type, flags);
        // then the RTA_DST attribute.
        var body = [UInt8](repeating: 0, count: RTNL.rtmsgSize)
        body[0] = family
        body[1] = UInt8(address.count * 8)
        body.appendLittle(UInt16(4 + address.count))
        body.appendLittle(RTNL.routeDestination)
        body += address
        do {
            let socket = try NetlinkSocket(receiveTimeout: .seconds(1))
            let reply = try socket.request(RTNL.getRoute, body: body, name: "route lookup")
            return try RouteMessage(reply).outputInterfaces.first
        } catch {
            return nil
        }
    }

    /// The name of `ifindex` in this namespace.
    public static func name(of ifindex: UInt32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(ifindex, &buffer) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
