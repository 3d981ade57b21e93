// tplcheck checks a Helm chart's templates without Helm: every file under
// templates/ must parse as a Go template (with Helm's and sprig's function
// names), every `include`/`template` must name a defined template, every
// `.Values.a.b` reference must exist in the values (given as JSON), and
// every values key must be used by some template.
//
// It uses only the standard library, so it runs offline in GOPATH mode:
//
//	GO111MODULE=off go run tests/chart/tplcheck.go -chart charts/usher -values values.json
//
// autoscaler/tests/chart.rs runs it (converting values.yaml to JSON first).
// It prints one line per problem and exits 1 if there is any.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template/parse"
)

// funcNames are the functions a Helm template may call: Go's builtins,
// sprig's (as Helm registers them, without env/expandenv) and Helm's own.
// Parsing only needs the names.
var funcNames = strings.Fields(`
and or not len index slice print printf println html js urlquery call eq ne lt le gt ge
hello ago date date_in_zone date_modify dateInZone dateModify duration durationRound
htmlDate htmlDateInZone must_date_modify mustDateModify mustToDate now toDate unixEpoch
abbrev abbrevboth trunc trim upper lower title untitle substr repeat trimall trimAll
trimSuffix trimPrefix nospace initials randAlphaNum randAlpha randAscii randNumeric
swapcase shuffle snakecase camelcase kebabcase wrap wrapWith contains hasPrefix hasSuffix
quote squote cat indent nindent replace plural sha1sum sha256sum sha512sum adler32sum
toString atoi int64 int float64 seq toDecimal split splitList splitn toStrings until
untilStep add1 add sub div mod mul randInt add1f addf subf divf mulf biggest max min
maxf minf ceil floor round join sortAlpha default empty coalesce all any compact
mustCompact fromJson toJson toPrettyJson toRawJson mustFromJson mustToJson
mustToPrettyJson mustToRawJson ternary deepCopy mustDeepCopy typeOf typeIs typeIsLike
kindOf kindIs deepEqual getHostByName base dir clean ext isAbs osBase osClean osDir
osExt osIsAbs b64enc b64dec b32enc b32dec tuple list dict get set unset hasKey pluck
keys pick omit merge mergeOverwrite mustMerge mustMergeOverwrite values append push
mustAppend mustPush prepend mustPrepend first mustFirst rest mustRest last mustLast
initial mustInitial reverse mustReverse uniq mustUniq without mustWithout has mustHas
mustSlice concat dig chunk mustChunk bcrypt htpasswd genPrivateKey derivePassword
buildCustomCert genCA genCAWithKey genSelfSignedCert genSelfSignedCertWithKey
genSignedCert genSignedCertWithKey encryptAES decryptAES randBytes uuidv4 semver
semverCompare fail regexMatch mustRegexMatch regexFindAll mustRegexFindAll regexFind
mustRegexFind regexReplaceAll mustRegexReplaceAll regexReplaceAllLiteral
mustRegexReplaceAllLiteral regexSplit mustRegexSplit regexQuoteMeta urlParse urlJoin
toToml fromToml toYaml toYamlPretty mustToYaml fromYaml fromYamlArray fromJsonArray
include tpl required lookup
`)

// builtinObjects are the fields of a template's root context.
var builtinObjects = map[string]bool{
	"Values": true, "Release": true, "Chart": true, "Capabilities": true,
	"Files": true, "Template": true, "Subcharts": true,
}

// A place in the values: a path of keys, or unknown.
type place struct {
	known bool
	root  bool     // the root context (.Values is one of its fields)
	path  []string // under .Values, when !root
}

var unknown = place{}
var rootPlace = place{known: true, root: true}

type checker struct {
	values   any
	defined  map[string]string // template name -> file
	used     map[string]bool   // values paths ("a.b.c") used, whole subtrees
	problems []string
}

func (c *checker) problem(tree *parse.Tree, node parse.Node, format string, args ...any) {
	where := tree.ParseName
	if node != nil {
		loc, _ := tree.ErrorContext(node)
		where = loc
	}
	c.problems = append(c.problems, fmt.Sprintf("%s: %s", where, fmt.Sprintf(format, args...)))
}

// lookup reports whether path exists in the values.
func (c *checker) lookup(path []string) (bool, string) {
	cur := c.values
	for i, key := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return false, fmt.Sprintf(".Values.%s is not a map", strings.Join(path[:i], "."))
		}
		next, ok := m[key]
		if !ok {
			return false, fmt.Sprintf(".Values.%s is not in values.yaml", strings.Join(path[:i+1], "."))
		}
		cur = next
	}
	return true, ""
}

// useValues checks a reference to .Values.<path> and marks it used.
func (c *checker) useValues(tree *parse.Tree, node parse.Node, path []string) {
	if ok, why := c.lookup(path); !ok {
		c.problem(tree, node, "%s", why)
		return
	}
	c.used[strings.Join(path, ".")] = true
}

// resolve gives the place a chain of fields from `base` leads to, checking
// any .Values reference on the way.
func (c *checker) resolve(tree *parse.Tree, node parse.Node, base place, idents []string, strictRoot bool) place {
	if len(idents) == 0 {
		return base
	}
	// A `.Values` anywhere in a chain from an unknown base (e.g. `$root.Values.x`
	// or `.root.Values.x` in a helper given a dict) is a values reference.
	if !base.known {
		for i, id := range idents {
			if id == "Values" {
				path := append([]string{}, idents[i+1:]...)
				c.useValues(tree, node, path)
				return place{known: true, path: path}
			}
		}
		return unknown
	}
	if base.root {
		if idents[0] != "Values" {
			if strictRoot && !builtinObjects[idents[0]] {
				c.problem(tree, node, "unknown field .%s of the root context", idents[0])
			}
			return unknown
		}
		path := append([]string{}, idents[1:]...)
		c.useValues(tree, node, path)
		return place{known: true, path: path}
	}
	path := append(append([]string{}, base.path...), idents...)
	c.useValues(tree, node, path)
	return place{known: true, path: path}
}

type scope struct {
	dot        place
	vars       map[string]place
	strictRoot bool // top-level file: the root context's fields are known
}

func (s scope) with(dot place) scope {
	vars := make(map[string]place, len(s.vars))
	for k, v := range s.vars {
		vars[k] = v
	}
	return scope{dot: dot, vars: vars, strictRoot: s.strictRoot}
}

// placeOf gives the place an argument node denotes, checking references.
func (c *checker) placeOf(tree *parse.Tree, s scope, node parse.Node) place {
	switch n := node.(type) {
	case *parse.DotNode:
		return s.dot
	case *parse.FieldNode:
		return c.resolve(tree, n, s.dot, n.Ident, s.strictRoot)
	case *parse.VariableNode:
		base, ok := s.vars[n.Ident[0]]
		if !ok {
			base = unknown
		}
		return c.resolve(tree, n, base, n.Ident[1:], s.strictRoot && n.Ident[0] == "$")
	case *parse.ChainNode:
		base := c.placeOf(tree, s, n.Node)
		return c.resolve(tree, n, base, n.Field, false)
	case *parse.PipeNode:
		return c.pipe(tree, s, n)
	}
	return unknown
}

// pipe walks a pipeline and gives its value's place when it is a plain
// reference (`.Values.x`, `$v.y`), else unknown.
func (c *checker) pipe(tree *parse.Tree, s scope, p *parse.PipeNode) place {
	if p == nil {
		return unknown
	}
	result := unknown
	for i, cmd := range p.Cmds {
		if len(cmd.Args) == 0 {
			continue
		}
		if id, ok := cmd.Args[0].(*parse.IdentifierNode); ok {
			c.call(tree, s, id, cmd)
			result = unknown
			continue
		}
		pl := c.placeOf(tree, s, cmd.Args[0])
		for _, arg := range cmd.Args[1:] {
			c.placeOf(tree, s, arg)
		}
		if i == 0 && len(cmd.Args) == 1 {
			result = pl
		} else {
			result = unknown
		}
	}
	for _, v := range p.Decl {
		s.vars[v.Ident[0]] = result
	}
	return result
}

// call checks a function call's arguments, and the names given to
// include/template and index keys into the values.
func (c *checker) call(tree *parse.Tree, s scope, id *parse.IdentifierNode, cmd *parse.CommandNode) {
	args := cmd.Args[1:]
	switch id.Ident {
	case "include", "template":
		if len(args) > 0 {
			if name, ok := args[0].(*parse.StringNode); ok {
				if _, found := c.defined[name.Text]; !found {
					c.problem(tree, name, "%s %q: no such template is defined", id.Ident, name.Text)
				}
			}
		}
	case "index":
		if len(args) > 1 {
			base := c.placeOf(tree, s, args[0])
			keys := []string{}
			for _, a := range args[1:] {
				str, ok := a.(*parse.StringNode)
				if !ok {
					keys = nil
					break
				}
				keys = append(keys, str.Text)
			}
			if base.known && keys != nil {
				c.resolve(tree, cmd, base, keys, false)
			}
			for _, a := range args[1:] {
				c.placeOf(tree, s, a)
			}
			return
		}
	}
	for _, a := range args {
		c.placeOf(tree, s, a)
	}
}

func (c *checker) walk(tree *parse.Tree, s scope, node parse.Node) {
	switch n := node.(type) {
	case nil:
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, child := range n.Nodes {
			c.walk(tree, s, child)
		}
	case *parse.ActionNode:
		c.pipe(tree, s, n.Pipe)
	case *parse.IfNode:
		c.pipe(tree, s, n.Pipe)
		c.walk(tree, s.with(s.dot), n.List)
		c.walk(tree, s.with(s.dot), n.ElseList)
	case *parse.WithNode:
		inner := s.with(s.dot)
		dot := c.pipe(tree, inner, n.Pipe)
		inner.dot = dot
		c.walk(tree, inner, n.List)
		c.walk(tree, s.with(s.dot), n.ElseList)
	case *parse.RangeNode:
		inner := s.with(s.dot)
		c.pipe(tree, inner, n.Pipe)
		// Keys and elements of what is ranged over are not checked.
		for _, v := range n.Pipe.Decl {
			inner.vars[v.Ident[0]] = unknown
		}
		inner.dot = unknown
		c.walk(tree, inner, n.List)
		c.walk(tree, s.with(s.dot), n.ElseList)
	case *parse.TemplateNode:
		if _, found := c.defined[n.Name]; !found {
			c.problem(tree, n, "template %q: no such template is defined", n.Name)
		}
		c.pipe(tree, s, n.Pipe)
	case *parse.TextNode, *parse.CommentNode, *parse.BreakNode, *parse.ContinueNode:
	default:
		c.problem(tree, node, "unexpected node %T", node)
	}
}

// unused lists the values keys (leaves and empty maps/lists) no template uses.
func (c *checker) unused(v any, path []string, out *[]string) {
	key := strings.Join(path, ".")
	if len(path) > 0 && c.used[key] {
		return
	}
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 {
		// A leaf: used when an ancestor is used (whole subtree), checked above.
		*out = append(*out, ".Values."+key)
		return
	}
	for k, child := range m {
		c.unused(child, append(append([]string{}, path...), k), out)
	}
}

func main() {
	chart := flag.String("chart", "", "the chart directory")
	valuesFile := flag.String("values", "", "the chart's values as JSON")
	flag.Parse()
	if *chart == "" || *valuesFile == "" {
		fmt.Fprintln(os.Stderr, "usage: tplcheck -chart DIR -values values.json")
		os.Exit(2)
	}
	raw, err := os.ReadFile(*valuesFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c := &checker{defined: map[string]string{}, used: map[string]bool{}}
	if err := json.Unmarshal(raw, &c.values); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", *valuesFile, err)
		os.Exit(2)
	}

	funcs := map[string]any{}
	for _, name := range funcNames {
		funcs[name] = func() {}
	}

	type file struct {
		name  string
		trees map[string]*parse.Tree
	}
	var files []file
	dir := filepath.Join(*chart, "templates")
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(*chart, path)
		text, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		trees := map[string]*parse.Tree{}
		t := parse.New(rel)
		t.Mode = parse.ParseComments
		if _, err := t.Parse(string(text), "{{", "}}", trees, funcs); err != nil {
			c.problems = append(c.problems, err.Error())
			return nil
		}
		for name := range trees {
			if name == rel {
				continue
			}
			if other, dup := c.defined[name]; dup {
				c.problems = append(c.problems, fmt.Sprintf("%s: template %q is also defined in %s", rel, name, other))
			}
			c.defined[name] = rel
		}
		files = append(files, file{rel, trees})
		return nil
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if len(files) == 0 && len(c.problems) == 0 {
		c.problems = append(c.problems, dir+": no templates")
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })
	for _, f := range files {
		names := make([]string, 0, len(f.trees))
		for name := range f.trees {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			tree := f.trees[name]
			s := scope{vars: map[string]place{}}
			if name == f.name {
				// The file itself runs with the root context.
				s.dot, s.strictRoot = rootPlace, true
				s.vars["$"] = rootPlace
			} else {
				// A helper gets whatever include passes: only `.Values`
				// references are checked in it.
				s.dot = unknown
				s.vars["$"] = unknown
			}
			c.walk(tree, s, tree.Root)
		}
	}
	var unused []string
	c.unused(c.values, nil, &unused)
	sort.Strings(unused)
	for _, u := range unused {
		c.problems = append(c.problems, fmt.Sprintf("values.yaml: %s is not used by any template", u))
	}
	if len(c.problems) > 0 {
		for _, p := range c.problems {
			fmt.Println(p)
		}
		fmt.Printf("%d problem(s) in %d template file(s)\n", len(c.problems), len(files))
		os.Exit(1)
	}
	fmt.Printf("ok: %d template file(s), %d defined template(s), every .Values reference exists and every values key is used\n", len(files), len(c.defined))
}
