/// The state of a tracked flow, which decides its lifetime (masqd's `conntrack-*-timeout` keys).
public enum FlowState: String, OpenStringEnum, CaseIterable {
    /// TCP: a SYN, no SYN-ACK yet.
    case synSent = "syn-sent"
    /// TCP: a SYN-ACK, the handshake's last ACK not yet seen.
    case synRecv = "syn-recv"
    /// TCP: the handshake completed (or the flow was picked up mid-stream).
    case established
    /// TCP: one side sent a FIN, the other has sent nothing since.
    case finWait = "fin-wait"
    /// TCP: one side closed, the other acknowledged and may go on sending.
    case closeWait = "close-wait"
    /// TCP: both sides sent a FIN, or an in-window RST ended the connection.
    case closing
    /// UDP and ICMP: no reply yet.
    case unreplied
    /// UDP and ICMP: replies were seen.
    case replied
    case unknown
}
