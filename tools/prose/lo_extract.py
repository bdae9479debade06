import os,re,sys
from html.parser import HTMLParser
base='/tmp/prose/dl/deb/lo/usr/share/libreoffice/help/'
class P(HTMLParser):
    def __init__(s):
        super().__init__(); s.paras=[]; s.on=False; s.buf=[]; s.skip=0
    def handle_starttag(s,t,a):
        a=dict(a); cls=(a.get('class') or '').split()
        if t in('pre','script','style'): s.skip+=1
        if t=='p' and any(c in('paragraph','listitem','tablecontent') for c in cls): s.on=True; s.buf=[]
    def handle_endtag(s,t):
        if t in('pre','script','style') and s.skip: s.skip-=1
        if t=='p' and s.on:
            s.on=False; x=re.sub(r'\s+',' ',''.join(s.buf)).strip()
            if x: s.paras.append(x)
    def handle_data(s,d):
        if s.on and not s.skip: s.buf.append(d)
def paras(l):
    out=[]
    for root,_,fs in sorted(os.walk(base+l+'/text')):
        for f in sorted(fs):
            if f.endswith('.html'):
                p=P(); p.feed(open(os.path.join(root,f),encoding='utf-8',errors='replace').read()); out+=p.paras
    return out
en=set(paras('en-US'))
for k in sys.argv[1:]:
    ps=paras(k); seen=set(); keep=[]
    for x in ps:
        if len(x)<40 or x in en or x in seen: continue
        seen.add(x); keep.append(x)
    os.makedirs('/tmp/prose/'+k,exist_ok=True)
    open(f'/tmp/prose/{k}/libreoffice_help_7.4.txt','w',encoding='utf-8').write('\n'.join(keep)+'\n')
    print(k,len(ps),len(keep),sum(len(x.encode()) for x in keep),flush=True)
