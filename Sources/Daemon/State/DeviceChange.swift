import Datapath
import Logging

/// How the devices in force differ between two applied desired states: what the log says when
/// a device starts or stops masquerading, its SNAT address moves, or it comes to lack one.
/// Devices are matched by ifindex, as the datapath keys them (a device deleted and made again is
/// a new device).
enum DeviceChange: Equatable {
    case inForce(DesiredState.Device)
    case notInForce(DesiredState.Device, reason: String)
    case addressChanged(from: DesiredState.Device, to: DesiredState.Device)
    /// The device has no SNAT address of a family that is on (`missingSNATAddress`). Told when
    /// that starts or its reason changes, not on every reconcile: on an IPv4-only node it is
    /// the normal state for IPv6.
    case missingAddress(DesiredState.Device, ipv6: Bool, reason: String)

    /// The changes from `old` (nil before the first apply) to `new`, the state of `inputs`;
    /// removals first.
    static func between(_ old: DesiredState?, _ new: DesiredState, inputs: ReconcileInputs) -> [DeviceChange] {
        let before = Dictionary((old?.devices ?? []).map { ($0.ifindex, $0) }, uniquingKeysWith: { a, _ in a })
        let after = Dictionary(new.devices.map { ($0.ifindex, $0) }, uniquingKeysWith: { a, _ in a })
        var changes: [DeviceChange] = []
        for device in old?.devices ?? [] where after[device.ifindex] == nil {
            changes.append(.notInForce(device, reason: departure(of: device, from: new, inputs: inputs)))
        }
        for device in new.devices {
            let previous = before[device.ifindex]
            if let previous {
                if previous != device { changes.append(.addressChanged(from: previous, to: device)) }
            } else {
                changes.append(.inForce(device))
            }
            let missing = new.missingSNATAddress(device)
            let missed = old.flatMap { old in previous.map { old.missingSNATAddress($0) } }
            if let reason = missing.ipv4, reason != missed?.ipv4 {
                changes.append(.missingAddress(device, ipv6: false, reason: reason))
            }
            if let reason = missing.ipv6, reason != missed?.ipv6 {
                changes.append(.missingAddress(device, ipv6: true, reason: reason))
            }
        }
        return changes
    }

    /// Why `device`, in force before, is not in `new`, the state of `inputs`.
    static func departure(of device: DesiredState.Device, from new: DesiredState, inputs: ReconcileInputs) -> String {
        let config = inputs.config, network = inputs.network
        guard let link = network.links.first(where: { $0.index == device.ifindex }) else {
            return "the link was deleted"
        }
        if let reason = new.skippedDevices[link.name] { return reason }
        if link.isLoopback { return "a loopback device is never masquerading" }
        // Listed devices are chosen by name, the others by their default route (a rename keeps it).
        if !config.devices.isEmpty {
            let selectors = config.devices.map(\.description).joined(separator: ",")
            return link.name != device.name ? "renamed to \(link.name), which devices (\(selectors)) does not select"
                : "devices (\(selectors)) no longer selects it"
        }
        let routed = network.defaultRouteDevices.sorted()
        return routed.isEmpty ? "it no longer carries a default route"
            : "the default route is on \(routed.joined(separator: ",")), not on this device"
    }

    func log(to logger: Logger) {
        switch self {
        case .inForce(let device):
            logger.info("Device in force", metadata: device.metadata)
        case .notInForce(let device, let reason):
            var metadata = device.metadata
            metadata["reason"] = "\(reason)"
            logger.info("Device no longer in force", metadata: metadata)
        case .addressChanged(let previous, let device):
            var metadata = device.metadata
            metadata["snat.v4.previous"] = "\(previous.snatV4?.description ?? "-")"
            metadata["snat.v6.previous"] = "\(previous.snatV6?.description ?? "-")"
            if previous.name != device.name { metadata["device.name.previous"] = "\(previous.name)" }
            logger.info("Device SNAT address changed; new flows use the new address", metadata: metadata)
        case .missingAddress(let device, let ipv6, let reason):
            var metadata = device.metadata
            metadata["reason"] = "\(reason)"
            if ipv6 {
                // Common on IPv4-only nodes (IPv6 masquerading is on by default): not a warning.
                logger.notice("Masquerading device has no usable global IPv6 address", metadata: metadata)
            } else {
                logger.warning("Masquerading device has no usable IPv4 address", metadata: metadata)
            }
        }
    }
}

extension DesiredState.Device {
    /// The log metadata of a device in force.
    var metadata: Logger.Metadata {
        [
            "device.name": "\(name)",
            "device.ifindex": "\(ifindex)",
            "device.kind": "\(linkLayer.kind)",
            "snat.v4": "\(snatV4?.description ?? "-")",
            "snat.v6": "\(snatV6?.description ?? "-")",
        ]
    }
}
