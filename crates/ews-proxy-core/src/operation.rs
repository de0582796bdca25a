//! EWS operation sniffer (in progress).
