// esbuild entry for pages/partytracks.bundle.js: puts partytracks' client API and rxjs on window.
import * as partytracks from "partytracks/client";
import * as rxjs from "rxjs";
window.partytracks = partytracks;
window.rxjs = rxjs;
