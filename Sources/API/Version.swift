/// The masq release both binaries report.
public let masqVersion = "0.1.0"
