package httpapi

import (
	"time"

	"telematics/pkg/clock"
)

// Now is the time on the API's Clock.
func (a *API) Now() time.Time { return clock.Or(a.Clock).Now() }
