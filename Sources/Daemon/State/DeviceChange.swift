import Datapath
import Logging

/// How the devices in force differ between two applied desired states: what the log says when
/// a device starts or stops masquerading or its SNAT address moves. Devices are matched by
/// ifindex, as the datapath keys them (a device deleted and made again is a new device).
enum DeviceChange: Equatable {
    case inForce(DesiredState.Device)
    case notInForce(DesiredState.Device, reason: String)
    case addressChanged(from: DesiredState.Device, to: DesiredState.Device)

    /// The changes from `old` (nil before the first apply) to `new`, removals first.
    static func between(_ old: DesiredState?, _ new: DesiredState) -> [DeviceChange] {
        let before = Dictionary((old?.devices ?? []).map { ($0.ifindex, $0) }, uniquingKeysWith: { a, _ in a })
        let after = Dictionary(new.devices.map { ($0.ifindex, $0) }, uniquingKeysWith: { a, _ in a })
        var changes: [DeviceChange] = []
        for device in old?.devices ?? [] where after[device.ifindex] == nil {
            let reason = new.skippedDevices[device.name]
                ?? "no longer selected (the device is gone, renamed, or lost its default route)"
            changes.append(.notInForce(device, reason: reason))
        }
        for device in new.devices {
            if let previous = before[device.ifindex] {
                if previous != device { changes.append(.addressChanged(from: previous, to: device)) }
            } else {
                changes.append(.inForce(device))
            }
        }
        return changes
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
