@preconcurrency import Glibc
import NetworkTypes

/// Which device the kernel routes a packet through: RTM_GETROUTE requests in the daemon's
/// network namespace. Used by `/v1/explain` when the caller names no device.
public enum RouteLookup {
    /// The ifindex of the output device for a packet to `destination`, or nil when there is no
    /// route. With a `source`, the packet is routed as the node forwards it, arriving on the
    /// device that routes to the source (`ip route get DST from SRC iif DEV`), so that rules on
    /// the source (`ip rule from POD lookup TABLE`, as multi-NIC and ENI setups route pods)
    /// apply; then as a packet from a local source; then by the destination alone.
    public static func outputInterface(for destination: IPAddress, from source: IPAddress? = nil) -> UInt32? {
        if let source {
            if let arrival = lookup(destination: source), let out = lookup(destination: destination, source: source, input: arrival) {
                return out
            }
            if let out = lookup(destination: destination, source: source) { return out }
        }
        return lookup(destination: destination)
    }

    private static func lookup(destination: IPAddress, source: IPAddress? = nil, input: UInt32? = nil) -> UInt32? {
        // rtmsg: family, dst_len, src_len, then zeros (tos, table, protocol, scope, type, flags);
        // then the RTA_DST, RTA_SRC and RTA_IIF attributes.
        var body = [UInt8](repeating: 0, count: RTNL.rtmsgSize)
        body[0] = destination.bitWidth == 32 ? UInt8(AF_INET) : UInt8(AF_INET6)
        body[1] = UInt8(destination.bitWidth)
        body.appendAttribute(RTNL.routeDestination, bytes(of: destination))
        if let source {
            guard source.bitWidth == destination.bitWidth else { return nil }
            body[2] = UInt8(source.bitWidth)
            body.appendAttribute(RTNL.routeSource, bytes(of: source))
        }
        if let input {
            var bytes: [UInt8] = []
            bytes.appendLittle(input)
            body.appendAttribute(RTNL.routeInputInterface, bytes)
        }
        do {
            let socket = try NetlinkSocket(receiveTimeout: .seconds(1))
            let reply = try socket.request(RTNL.getRoute, body: body, name: "route lookup")
            return try RouteMessage(reply).outputInterfaces.first
        } catch {
            return nil
        }
    }

    private static func bytes(of address: IPAddress) -> [UInt8] {
        switch address {
        case .v4(let a): [a.bytes.0, a.bytes.1, a.bytes.2, a.bytes.3]
        case .v6(let a): a.bytes
        }
    }

    /// The name of `ifindex` in this namespace.
    public static func name(of ifindex: UInt32) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE) + 1)
        guard if_indextoname(ifindex, &buffer) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
