// The address and protocol types are part of the API contract: importing API brings them.
@_exported import NetworkTypes
