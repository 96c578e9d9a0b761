package bench

import (
	"bufio"
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"telematics/pkg/protocol"
	"telematics/pkg/tlsconf"
)

// mosquittoConf is a Debian mosquitto set up as the project's broker: a loopback listener, no
// anonymous clients, a password file (mosquitto cannot verify the gateway's tokens: each car's
// token is its password) and an ACL file equivalent to pkg/broker's ACL for cars and the
// gateway.
type mosquittoConf struct {
	confPath, passwdPath, aclPath string
	addr                          string
	gatewayPassword               string
	users                         []string // password file lines
	proc                          *sutProc
	probe                         int         // reloads so far; names the probe user
	tls                           *tls.Config // the probe's, with a TLS listener
}

// mosquittoACL grants each car its own topics (%u is the username, the VIN) and each app user
// its own request and reply topics, in the directions of docs/PROTOCOL.md, and the gateway both
// trees. (A car may thereby also write app/VIN/cmd: no user is called like a VIN, since user
// names are lower case, and the gateway answers such a request for no user.)
const mosquittoACL = `# written by vehicle-sim bench
user gateway
topic readwrite v/#
topic readwrite app/#

pattern write v/%u/telemetry
pattern write v/%u/status
pattern write v/%u/result
pattern write v/%u/keys/ack
pattern write v/%u/events
pattern read v/%u/cmd
pattern read v/%u/keys
pattern read v/%u/events/ack
pattern write app/%u/cmd
pattern read app/%u/reply
`

func newMosquittoConf(dir, addr, bin string, ca *tlsconf.LocalCA) (*mosquittoConf, error) {
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("mosquitto: %w (install Debian's mosquitto, or pass --mosquitto PATH)", err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	m := &mosquittoConf{
		confPath:   filepath.Join(dir, "mosquitto.conf"),
		passwdPath: filepath.Join(dir, "mosquitto.passwd"),
		aclPath:    filepath.Join(dir, "mosquitto.acl"),
		addr:       addr,
	}
	pw := make([]byte, 24)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	m.gatewayPassword = hex.EncodeToString(pw)
	line, err := passwdLine("gateway", m.gatewayPassword)
	if err != nil {
		return nil, err
	}
	m.users = append(m.users, line)
	if err := m.writePasswd(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(m.aclPath, []byte(mosquittoACL), 0o600); err != nil {
		return nil, err
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, "# written by vehicle-sim bench\nper_listener_settings false\nlistener %s %s\n", port, host)
	if ca != nil {
		// TLS only on the one listener, 1.2 at least, as the project's brokers.
		fmt.Fprintf(&conf, "cafile %s\ncertfile %s\nkeyfile %s\ntls_version tlsv1.2\n", ca.CA, ca.Files.Cert, ca.Files.Key)
		if m.tls, err = tlsconf.ClientConfig(ca.CA); err != nil {
			return nil, err
		}
		m.tls.ServerName = host
	}
	fmt.Fprintf(&conf, "allow_anonymous false\npassword_file %s\nacl_file %s\n", m.passwdPath, m.aclPath)
	// No persistence (the broker holds nothing that matters), Nagle off (as mochi), queues
	// large enough that a slow gateway is not what drops messages.
	conf.WriteString("persistence false\nset_tcp_nodelay true\nmax_queued_messages 1000000\nmax_connections -1\n")
	conf.WriteString("sys_interval 0\nlog_dest stderr\nlog_type error\nlog_type warning\nlog_timestamp true\n")
	if os.Getuid() == 0 {
		// As root, mosquitto would switch to user "mosquitto", which cannot read this
		// directory.
		conf.WriteString("user root\n")
	} else if u, err := user.Current(); err == nil {
		fmt.Fprintf(&conf, "user %s\n", u.Username)
	}
	if err := os.WriteFile(m.confPath, []byte(conf.String()), 0o600); err != nil {
		return nil, err
	}
	return m, nil
}

// passwdLine is a mosquitto password file entry as mosquitto_passwd writes it (mosquitto 2.0):
// $7$ = PBKDF2-HMAC-SHA512, 101 iterations, a 12-byte salt, standard base64.
func passwdLine(username, password string) (string, error) {
	salt := make([]byte, 12)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key, err := pbkdf2.Key(sha512.New, password, salt, 101, 64)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s:$7$101$%s$%s", username, base64.StdEncoding.EncodeToString(salt), base64.StdEncoding.EncodeToString(key)), nil
}

func (m *mosquittoConf) writePasswd() error {
	tmp := m.passwdPath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, l := range m.users {
		w.WriteString(l)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, m.passwdPath)
}

// allow adds the cars (or app users: username and token) to the password file and has
// mosquitto reload it (SIGHUP). It returns once a probe user added in the same reload is
// admitted, so the others are too. The file holds a PBKDF2 hash of each token, so a token's
// length (an ES256 JWT of a few hundred bytes) does not matter to the file, and mosquitto takes
// such a token as the CONNECT password (TestSpawnedModes runs cars and apps through it).
func (m *mosquittoConf) allow(ctx context.Context, creds []protocol.Credentials) error {
	for _, c := range creds {
		line, err := passwdLine(c.Username, c.Token)
		if err != nil {
			return err
		}
		m.users = append(m.users, line)
	}
	m.probe++
	probeUser, probePass := fmt.Sprintf("bench-probe-%d", m.probe), hex.EncodeToString([]byte(time.Now().String()))
	line, err := passwdLine(probeUser, probePass)
	if err != nil {
		return err
	}
	m.users = append(m.users, line)
	if err := m.writePasswd(); err != nil {
		return err
	}
	if err := m.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("reload mosquitto: %w", err)
	}
	probe := protocol.Credentials{VIN: probeUser, ClientID: probeUser, Username: probeUser, Token: probePass}
	var counters loadCounters // the probe's, thrown away
	counters.init()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, _, err := dialCar(ctx, m.addr, nil, m.tls, probe, 0, 5*time.Second, 1, &counters)
		if err == nil {
			c.close()
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("mosquitto did not admit the new password file within 30s: %w", err)
		}
		if !m.proc.alive() {
			return m.proc.deadError()
		}
		time.Sleep(50 * time.Millisecond)
	}
}
