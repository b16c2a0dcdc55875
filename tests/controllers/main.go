// Command argo-measure takes one measurement of an Argo Rollouts AnalysisTemplate's web metrics
// against a live endpoint, with the libraries and rules Argo Rollouts itself uses, and prints the
// measurement phase of each metric as one JSON line.
//
// It mirrors, from argoproj/argo-rollouts:
//   - utils/analysis/factory.go ResolveMetricArgs and utils/template ResolveQuotedArgs: args are
//     substituted into the metric's JSON text, each value escaped as in a Go string literal;
//   - metricproviders/webmetric/webmetric.go Run and parseResponse: GET unless a method is set, a
//     non-2xx answer is a measurement Error, the body goes through Kubernetes JSONPath (default
//     "{$}") and the first value found becomes `result`; a body that is not JSON is evaluated as
//     a string;
//   - utils/evaluate/evaluate.go EvaluateResult and EvalCondition: expr over an environment with
//     `result` and Argo's helper functions; failure wins over success; neither is Inconclusive.
//
// Usage: argo-measure -host 127.0.0.1:9464 < request.json, where request.json is
// {"template": <AnalysisTemplate as JSON>, "args": {"name": "value", ...}}. -host replaces the
// host of every URL, so a shipped template can be measured against a local run. Limits and
// intervals are accepted and not used: folding measurements into a metric phase is the caller's.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/file"
	"k8s.io/client-go/util/jsonpath"
)

// Phases of a measurement (v1alpha1.AnalysisPhase).
const (
	successful   = "Successful"
	failed       = "Failed"
	inconclusive = "Inconclusive"
	phaseError   = "Error"
)

type header struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

// web holds the fields of v1alpha1.WebMetric this program honours; others are refused.
type web struct {
	Method         string          `json:"method,omitempty"`
	URL            string          `json:"url"`
	Headers        []header        `json:"headers,omitempty"`
	Body           string          `json:"body,omitempty"`
	TimeoutSeconds int64           `json:"timeoutSeconds,omitempty"`
	JSONPath       string          `json:"jsonPath,omitempty"`
	JSONBody       json.RawMessage `json:"jsonBody,omitempty"`
}

type metric struct {
	Name             string `json:"name"`
	SuccessCondition string `json:"successCondition,omitempty"`
	FailureCondition string `json:"failureCondition,omitempty"`
	Provider         struct {
		Web *web `json:"web,omitempty"`
	} `json:"provider"`
}

type argument struct {
	Name  string  `json:"name"`
	Value *string `json:"value,omitempty"`
}

type request struct {
	Template struct {
		APIVersion string          `json:"apiVersion"`
		Kind       string          `json:"kind"`
		Metadata   json.RawMessage `json:"metadata"`
		Spec       struct {
			Args    []argument        `json:"args"`
			Metrics []json.RawMessage `json:"metrics"`
		} `json:"spec"`
	} `json:"template"`
	Args map[string]string `json:"args"`
}

type measurement struct {
	Metric  string `json:"metric"`
	Phase   string `json:"phase"`
	Value   string `json:"value"`
	Message string `json:"message,omitempty"`
}

func main() {
	host := ""
	for i := 1; i < len(os.Args); i++ {
		switch {
		case os.Args[i] == "-host" && i+1 < len(os.Args):
			host = os.Args[i+1]
			i++
		default:
			fail(fmt.Errorf("unknown argument %q; usage: argo-measure [-host HOST:PORT] < request.json", os.Args[i]))
		}
	}
	var req request
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		fail(fmt.Errorf("request: %w", err))
	}
	if kind := req.Template.Kind; kind != "AnalysisTemplate" && kind != "ClusterAnalysisTemplate" {
		fail(fmt.Errorf("template kind must be AnalysisTemplate or ClusterAnalysisTemplate, got %q", kind))
	}
	args, err := mergeArgs(req.Template.Spec.Args, req.Args)
	if err != nil {
		fail(err)
	}
	if len(req.Template.Spec.Metrics) == 0 {
		fail(errors.New("template has no metrics"))
	}
	out := json.NewEncoder(os.Stdout)
	for i, raw := range req.Template.Spec.Metrics {
		m, err := resolveMetric(raw, args)
		if err != nil {
			fail(fmt.Errorf("metrics[%d]: %w", i, err))
		}
		if m.Provider.Web == nil {
			fail(fmt.Errorf("metrics[%d] %q: only the web provider is measured here", i, m.Name))
		}
		if host != "" {
			if m.Provider.Web.URL, err = withHost(m.Provider.Web.URL, host); err != nil {
				fail(fmt.Errorf("metrics[%d] %q: %w", i, m.Name, err))
			}
		}
		if err := out.Encode(run(m)); err != nil {
			fail(err)
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "argo-measure:", err)
	os.Exit(2)
}

// mergeArgs gives every template arg its value: the caller's, else the template's default;
// an arg without either is an error, as Argo refuses to start such a run.
func mergeArgs(declared []argument, given map[string]string) ([]argument, error) {
	known := map[string]bool{}
	out := make([]argument, 0, len(declared))
	for _, a := range declared {
		known[a.Name] = true
		if v, ok := given[a.Name]; ok {
			v := v
			a.Value = &v
		}
		if a.Value == nil {
			return nil, fmt.Errorf("args.%s was not supplied", a.Name)
		}
		out = append(out, a)
	}
	for name := range given {
		if !known[name] {
			return nil, fmt.Errorf("arg %q is not declared by the template", name)
		}
	}
	return out, nil
}

// tag is what fasttemplate finds between "{{" and "}}": the shortest run up to the next "}}".
var tag = regexp.MustCompile(`\{\{(.*?)\}\}`)

// resolveMetric substitutes args into the metric's JSON text (ResolveQuotedArgs) and decodes it.
func resolveMetric(raw json.RawMessage, args []argument) (metric, error) {
	var m metric
	// Argo marshals the typed metric before substituting; compacting stands in for that.
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return m, err
	}
	values := map[string]string{}
	for _, a := range args {
		quoted := strconv.Quote(*a.Value)
		values["args."+a.Name] = quoted[1 : len(quoted)-1]
	}
	var unresolved error
	text := tag.ReplaceAllStringFunc(compact.String(), func(t string) string {
		name := strings.TrimSpace(t[2 : len(t)-2])
		if v, ok := values[name]; ok {
			return v
		}
		unresolved = fmt.Errorf("failed to resolve %s", t)
		return ""
	})
	if unresolved != nil {
		return m, unresolved
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &fields); err != nil {
		return m, err
	}
	// Limits and timing are Argo's accumulation rules, not one measurement's: accepted, not used here.
	for _, k := range []string{"interval", "initialDelay", "count", "failureLimit", "inconclusiveLimit",
		"consecutiveErrorLimit", "consecutiveSuccessLimit"} {
		delete(fields, k)
	}
	rest, err := json.Marshal(fields)
	if err != nil {
		return m, err
	}
	dec := json.NewDecoder(bytes.NewReader(rest))
	dec.DisallowUnknownFields()
	err = dec.Decode(&m)
	return m, err
}

func withHost(raw, host string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", err
	}
	u.Host = host
	return u.String(), nil
}

// run is webmetric.Provider.Run for one measurement.
func run(m metric) measurement {
	w := m.Provider.Web
	res := measurement{Metric: m.Name}
	errorOut := func(err error) measurement {
		res.Phase, res.Message = phaseError, err.Error()
		return res
	}
	method := "GET"
	if w.Method != "" {
		method = w.Method
	}
	var body io.Reader
	switch {
	case w.Body != "" && w.JSONBody != nil:
		return errorOut(errors.New("use either Body or JSONBody; both cannot exists for WebMetric payload"))
	case (w.Body != "" || w.JSONBody != nil) && method == "GET":
		return errorOut(errors.New("Body/JSONBody can only be used with POST or PUT WebMetric Method types"))
	case w.Body != "":
		body = strings.NewReader(w.Body)
	case w.JSONBody != nil:
		body = bytes.NewReader(w.JSONBody)
	}
	req, err := http.NewRequest(method, w.URL, body)
	if err != nil {
		return errorOut(err)
	}
	req.Header = make(http.Header)
	for _, h := range w.Headers {
		req.Header.Set(h.Key, h.Value)
	}
	if w.JSONBody != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	timeout := 10 * time.Second
	if w.TimeoutSeconds > 0 {
		timeout = time.Duration(w.TimeoutSeconds) * time.Second
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return errorOut(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return errorOut(fmt.Errorf("received non 2xx response code: %v", resp.StatusCode))
	}
	parser := jsonpath.New("metrics")
	path := w.JSONPath
	if path == "" {
		path = "{$}"
	}
	if err := parser.Parse(path); err != nil {
		return errorOut(err) // Argo fails to build the provider; no measurement would be taken
	}
	value, phase, err := parseResponse(m, parser, resp)
	res.Value, res.Phase = value, phase
	if err != nil {
		res.Phase, res.Message = phaseError, err.Error()
	}
	return res
}

func parseResponse(m metric, parser *jsonpath.JSONPath, resp *http.Response) (string, string, error) {
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", phaseError, fmt.Errorf("Received no bytes in response: %v", err)
	}
	var data any
	if err := json.Unmarshal(raw, &data); err != nil {
		phase, evalErr := evaluateResult(string(raw), m)
		return string(raw), phase, evalErr
	}
	found, err := parser.FindResults(data)
	if err != nil {
		return "", phaseError, fmt.Errorf("Could not find JSONPath in body: %s", err)
	}
	val, valString, err := getValue(found)
	if err != nil {
		return "", phaseError, err
	}
	phase, err := evaluateResult(val, m)
	return valString, phase, err
}

func getValue(found [][]reflect.Value) (any, string, error) {
	for _, results := range found {
		for _, r := range results {
			val := r.Interface()
			b, err := json.Marshal(val)
			return val, string(b), err
		}
	}
	return nil, "", errors.New("result of web metric produced no value")
}

// evaluateResult is evaluate.EvaluateResult.
func evaluateResult(result any, m metric) (string, error) {
	success, failure := false, false
	var err error
	if m.SuccessCondition != "" {
		if success, err = evalCondition(result, m.SuccessCondition); err != nil {
			return phaseError, fmt.Errorf("could not evaluate successCondition %q: %w", m.SuccessCondition, err)
		}
	}
	if m.FailureCondition != "" {
		if failure, err = evalCondition(result, m.FailureCondition); err != nil {
			return phaseError, fmt.Errorf("could not evaluate failureCondition %q: %w", m.FailureCondition, err)
		}
	}
	switch {
	case m.SuccessCondition == "" && m.FailureCondition == "":
		return successful, nil
	case m.SuccessCondition != "" && m.FailureCondition == "":
		failure = !success
	case m.SuccessCondition == "" && m.FailureCondition != "":
		success = !failure
	}
	if failure {
		return failed, nil
	}
	if !success {
		return inconclusive, nil
	}
	return successful, nil
}

// evalCondition is evaluate.EvalCondition: the same environment, compiled against itself.
func evalCondition(resultValue any, condition string) (bool, error) {
	var err error
	env := map[string]any{
		"result":  valueFromPointer(resultValue),
		"asInt":   asInt,
		"asFloat": asFloat,
		"isNaN":   math.IsNaN,
		"isInf":   func(f float64) bool { return math.IsInf(f, 0) },
		"isNil":   func(_ any) bool { return isNil(resultValue) },
		"default": func(_ any, d any) any {
			if isNil(resultValue) {
				return d
			}
			return valueFromPointer(resultValue)
		},
	}
	unwrap := func(e error) error {
		var fileErr *file.Error
		if errors.As(err, &fileErr) {
			return errors.New(fileErr.Message)
		}
		return e
	}
	program, err := expr.Compile(condition, expr.Env(env))
	if err != nil {
		return false, unwrap(err)
	}
	output, err := expr.Run(program, env)
	if err != nil {
		return false, unwrap(err)
	}
	if b, ok := output.(bool); ok {
		return b, nil
	}
	return false, fmt.Errorf("expected bool, but got %T", output)
}

func asInt(in any) int64 {
	switch i := in.(type) {
	case float64:
		return int64(i)
	case float32:
		return int64(i)
	case int64:
		return int64(i)
	case int32:
		return int64(i)
	case int16:
		return int64(i)
	case int8:
		return int64(i)
	case int:
		return int64(i)
	case uint64:
		return int64(i)
	case uint32:
		return int64(i)
	case uint16:
		return int64(i)
	case uint8:
		return int64(i)
	case uint:
		return int64(i)
	case string:
		v, err := strconv.ParseInt(i, 10, 64)
		if err == nil {
			return v
		}
		panic(err)
	}
	panic(fmt.Sprintf("asInt() not supported on %v %v", reflect.TypeOf(in), in))
}

func asFloat(in any) float64 {
	switch i := in.(type) {
	case float64:
		return float64(i)
	case float32:
		return float64(i)
	case int64:
		return float64(i)
	case int32:
		return float64(i)
	case int16:
		return float64(i)
	case int8:
		return float64(i)
	case int:
		return float64(i)
	case uint64:
		return float64(i)
	case uint32:
		return float64(i)
	case uint16:
		return float64(i)
	case uint8:
		return float64(i)
	case uint:
		return float64(i)
	case string:
		v, err := strconv.ParseFloat(i, 64)
		if err == nil {
			return v
		}
		panic(err)
	}
	panic(fmt.Sprintf("asFloat() not supported on %v %v", reflect.TypeOf(in), in))
}

func isNil(in any) bool {
	if in == nil {
		return true
	}
	switch reflect.TypeOf(in).Kind() {
	case reflect.Ptr, reflect.Map, reflect.Array, reflect.Chan, reflect.Slice:
		return reflect.ValueOf(in).IsNil()
	}
	return false
}

func valueFromPointer(in any) any {
	if isNil(in) {
		return nil
	}
	if reflect.TypeOf(in).Kind() != reflect.Ptr {
		return in
	}
	return reflect.ValueOf(in).Elem().Interface()
}
