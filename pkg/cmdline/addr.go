package cmdline

import (
	"fmt"
	"net"
	"strconv"
)

// Off is the one spelling of a disabled listener, in flags, variables and YAML alike.
const Off = "off"

// Addr checks the listen address value of the setting name (a flag "--ws-addr" or a key
// "ws_addr", as the user wrote it): "off" disables the listener (addr "", off true); anything
// else must be HOST:PORT with a numeric port (":1883", "127.0.0.1:0"). An empty value is an
// error that says to write off: an empty string used to mean "the default" in some places and
// "disabled" in others.
func Addr(name, value string) (addr string, off bool, err error) {
	switch value {
	case Off:
		return "", true, nil
	case "":
		return "", false, fmt.Errorf("%s: empty address; write %s to disable the listener, or HOST:PORT", name, Off)
	}
	_, port, err := net.SplitHostPort(value)
	if err != nil {
		return "", false, fmt.Errorf("%s: %q is not HOST:PORT (e.g. 127.0.0.1:1883) or %s", name, value, Off)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return "", false, fmt.Errorf("%s: %q has no valid port (0 to 65535)", name, value)
	}
	return value, false, nil
}
