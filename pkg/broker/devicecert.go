package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"telematics/pkg/devicecert"
	"telematics/pkg/protocol"
)

// Device certificates: a car may connect over mutual TLS with the client certificate the
// gateway's device CA issued it (package devicecert) instead of its token. The TLS listener
// asks for a client certificate (tls.VerifyClientCertIfGiven with the device CA); the
// AuthHook verifies the chain again against the device CAs it was given, so that whatever
// else the listener trusts, only the device CA's car certificates name a car.

var (
	errCertInvalid     = refusal(protocol.ReasonUnauthenticated, "client certificate not issued by this gateway's device CA, expired, or not a car's")
	errCertRetired     = refusal(protocol.ReasonUnauthenticated, "certificate retired: the credentials were reissued")
	errUsernameNotCert = refusal(protocol.ReasonUnauthenticated, "username must be empty or the certificate's VIN")
	errCertClientID    = refusal(protocol.ReasonForbidden, "client id must be the certificate's VIN")
)

// maxPresentedCerts bounds the chain a client may present (leaf and intermediates).
const maxPresentedCerts = 4

// SetDeviceCAs makes the hook admit cars by device certificate: a client whose TLS connection
// presents a certificate that chains to pool (for client authentication, valid now) is that
// certificate's car. nil turns it off: certificates are then ignored and every client needs
// its token.
//
// A client that presents a certificate is judged by it alone: its username must be empty or
// the VIN, its password is not read (a token there neither helps nor hurts), its client id
// must be the VIN. The certificate names the id of the token it was issued with, and the
// retired-token check (SetRetired) applies to it: when the car's credentials are reissued or
// retired, its old certificate is refused with its old token.
func (h *AuthHook) SetDeviceCAs(pool *x509.CertPool) { h.deviceCAs.Store(pool) }

// presentedChain returns the certificates cl presented over TLS, leaf first, when the hook
// admits cars by certificate; nil otherwise (no device CAs, not TLS, no certificate).
func (h *AuthHook) presentedChain(cl *mqtt.Client) []*x509.Certificate {
	if h.deviceCAs.Load() == nil {
		return nil
	}
	chain := peerCertificates(cl.Net.Conn)
	if len(chain) == 0 {
		return nil
	}
	return chain
}

// connectionStater is a TLS connection (*tls.Conn).
type connectionStater interface {
	ConnectionState() tls.ConnectionState
}

// peerCertificates reads the certificates the client presented from conn: a *tls.Conn, or a
// connection wrapping one (this package's WebSocket connection and accept guard, or one that
// gives it up with NetConn, as gorilla's does).
func peerCertificates(conn net.Conn) []*x509.Certificate {
	for range 4 { // wrappers nest a few levels at most
		switch c := conn.(type) {
		case connectionStater:
			st := c.ConnectionState()
			if !st.HandshakeComplete {
				return nil
			}
			return st.PeerCertificates
		case *wsConn:
			conn = c.Conn
		case *guardedConn:
			conn = c.Conn
		case interface{ NetConn() net.Conn }:
			conn = c.NetConn()
		default:
			return nil
		}
	}
	return nil
}

// authenticateCert admits cl as the car its certificate chain names.
func (h *AuthHook) authenticateCert(cl *mqtt.Client, pk packets.Packet, chain []*x509.Certificate) (Identity, error) {
	if len(chain) > maxPresentedCerts {
		return Identity{}, fmt.Errorf("%w (%d certificates presented)", errCertInvalid, len(chain))
	}
	dev, err := devicecert.Verify(chain, h.deviceCAs.Load(), h.clock.Now())
	if err != nil {
		return Identity{}, fmt.Errorf("%w (%v)", errCertInvalid, err)
	}
	id := Identity{Role: protocol.RoleVehicle, Subject: dev.VIN, ExpiresAt: dev.NotAfter,
		TokenID: dev.CredentialsID, CertSerial: dev.Serial}
	if pk.Connect.UsernameFlag && len(pk.Connect.Username) > 0 && string(pk.Connect.Username) != dev.VIN {
		return Identity{}, errUsernameNotCert
	}
	if h.retired(id) {
		return Identity{}, fmt.Errorf("%w (serial %s)", errCertRetired, dev.Serial)
	}
	if cl.ID != dev.VIN {
		return Identity{}, errCertClientID
	}
	// As for a token: mochi publishes the will without asking the ACL.
	if pk.Connect.WillFlag && !h.acl.Allow(id, pk.Connect.WillTopic, true) {
		return Identity{}, errWillTopic
	}
	return id, nil
}
